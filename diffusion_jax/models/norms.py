"""Normalisation layers computed in fp32 whatever the compute dtype (as diffusers/transformers do in fp16).

Own small modules rather than wrappers of nn.LayerNorm/nn.GroupNorm, so parameters sit directly at
`<layer>/scale` and `<layer>/bias`, one-to-one with the PyTorch `weight`/`bias` names.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class LayerNorm(nn.Module):
  """LayerNorm over the last axis (two-pass variance, fp32), output in `dtype`."""
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    return _affine(self, (x32 - mean) * jax.lax.rsqrt(var + self.epsilon))


class GroupNorm(nn.Module):
  """GroupNorm over NHWC (or [B, T, C]) channels (two-pass variance, fp32), output in `dtype`."""
  num_groups: int = 32
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    if c % self.num_groups:
      raise ValueError(f"GroupNorm: {c} channels are not divisible into {self.num_groups} groups; check "
                       "norm_num_groups against block_out_channels in the model config.")
    g = x.astype(jnp.float32).reshape(x.shape[0], -1, self.num_groups, c // self.num_groups)
    mean = g.mean((1, 3), keepdims=True)
    var = jnp.square(g - mean).mean((1, 3), keepdims=True)
    return _affine(self, ((g - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape))


def _affine(norm: nn.Module, y: jax.Array) -> jax.Array:
  """Per-channel scale and shift of a normalised fp32 `y`, cast to the norm's compute dtype."""
  c = y.shape[-1]
  scale = norm.param("scale", nn.initializers.ones, (c,), norm.param_dtype)
  bias = norm.param("bias", nn.initializers.zeros, (c,), norm.param_dtype)
  return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(norm.dtype)
