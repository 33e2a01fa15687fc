"""Sinusoidal timestep features and the timestep MLP of the UNet."""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def timestep_embedding(timesteps: jax.Array, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0.0,
                       max_period: float = 10000.0) -> jax.Array:
  """[N] (possibly fractional) timesteps -> [N, dim] fp32 sinusoids, frequencies exp(-ln(P) i / (dim/2 - shift)).

  flip_sin_to_cos puts the cosines first (SD: True, freq_shift 0).
  """
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
  args = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
  sin, cos = jnp.sin(args), jnp.cos(args)
  emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class TimestepEmbedding(nn.Module):
  """linear_1, SiLU, linear_2 (diffusers' TimestepEmbedding with act_fn silu)."""
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Dense(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name="linear_1")(x)
    return nn.Dense(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name="linear_2")(nn.silu(x))
