"""Sinusoidal timestep features, the timestep MLP of the UNet and its optional pooled-text embedding."""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models.attention import dot_attention
from diffusion_jax.models.norms import LayerNorm

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


class AttentionPooling(nn.Module):
  """[B, T, D] -> [B, D]: a single query (the token mean plus a learned position) attends over itself and the
  tokens (diffusers' AttentionPooling, the pooling of DeepFloyd IF)."""
  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    if d % self.num_heads:
      raise ValueError(f"attention pooling: width {d} is not divisible by {self.num_heads} heads; set "
                       "addition_embed_type_num_heads to a divisor of cross_attention_dim.")
    position = self.param("positional_embedding", nn.initializers.normal(d ** -0.5), (1, d), self.param_dtype)
    query_token = x.mean(axis=1, keepdims=True) + position.astype(x.dtype)
    tokens = jnp.concatenate([query_token, x], axis=1)
    dense = lambda name: nn.Dense(d, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    pooled = dot_attention(dense("q_proj")(query_token), dense("k_proj")(tokens), dense("v_proj")(tokens),
                           self.num_heads)
    return pooled[:, 0]


class TextTimeEmbedding(nn.Module):
  """Pooled text added to the timestep embedding (diffusers' addition_embed_type="text"): LayerNorm, attention
  pooling, linear, LayerNorm. It gives every ResNet block the whole caption, next to the cross-attention."""
  features: int
  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, encoder_hidden_states: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = LayerNorm(1e-5, name="norm1", **kw)(encoder_hidden_states)
    x = AttentionPooling(self.num_heads, name="pool", **kw)(x)
    x = nn.Dense(self.features, name="proj", **kw)(x)
    return LayerNorm(1e-5, name="norm2", **kw)(x)
