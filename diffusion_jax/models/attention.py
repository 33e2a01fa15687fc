"""Attention layers of the latent-diffusion models, with optional capture of cross-attention maps.

Self-attention (and cross-attention when its maps are not wanted) takes the fastest path,
`jax.nn.dot_product_attention`: cuDNN flash attention on GPU in bf16/fp16 when the shapes allow it, XLA elsewhere,
except unmasked float32 attention on the CPU, which `cpu_attention` computes 3-4 times faster than XLA's.
Both accumulate the logits and the softmax in fp32, which is what diffusers' `upcast_attention` /
`upcast_softmax` ask for, so no extra casts are needed in bf16/fp16.

Cross-attention maps (Attend-and-Excite). A cross-attention layer hands back its probabilities
softmax(Q K^T / sqrt(d)) only when its spatial size is listed in the static `capture_cross_attn_at` argument of
the UNet call; every other call compiles exactly the fast path. The maps go to the `intermediates` collection:

    eps, state = unet.apply(params, latents, t, text_emb, capture_cross_attn_at=(16,),
                            mutable=["intermediates"])
    maps = mean_cross_attention(state["intermediates"])     # [B, 16*16, tokens], mean over heads and layers
    per_layer = cross_attention_maps(state["intermediates"])  # {"down_blocks_1/...": [B, heads, 256, tokens]}

An entry r of `capture_cross_attn_at` matches layers with r*r pixels (square latents); an entry (h, w) matches
exactly. This works under `jax.grad` w.r.t. the latents (return the maps or a loss on them from the function
being differentiated).
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from diffusion_jax.models.norms import GroupNorm, LayerNorm

Dtype = Any
Resolutions = Sequence[Union[int, tuple[int, int]]]
CAPTURE_NAME = "cross_attn_probs"


def _split_heads(x: jax.Array, heads: int) -> jax.Array:
  b, t, c = x.shape
  return x.reshape(b, t, heads, c // heads)


def dot_attention(q: jax.Array, k: jax.Array, v: jax.Array, heads: int, *, is_causal: bool = False,
                  mask: Optional[jax.Array] = None) -> jax.Array:
  """Multi-head attention on [B, T, C] projections through jax.nn.dot_product_attention; returns [B, T, C].

  mask: boolean, broadcastable to [B, heads, T, S] (True = attend).
  """
  b, t, c = q.shape
  if q.dtype == jnp.float16 and jax.default_backend() == "cpu":
    # XLA:CPU lacks the fp16 x fp16 -> fp32 dot algorithm that dot_product_attention requests for fp16.
    probs = attention_probs(q, k, heads, is_causal=is_causal, mask=mask)
    return jnp.einsum("bnts,bsnh->btnh", probs.astype(v.dtype), _split_heads(v, heads)).reshape(b, t, c)
  qh, kh, vh = _split_heads(q, heads), _split_heads(k, heads), _split_heads(v, heads)
  if _use_cudnn(q.dtype):
    try:
      out = jax.nn.dot_product_attention(qh, kh, vh, mask=mask, is_causal=is_causal, implementation="cudnn")
      return out.reshape(b, t, c)
    except (NotImplementedError, ValueError, RuntimeError):
      pass  # shapes/versions cuDNN's flash kernel rejects (checked while tracing): use XLA's
  if mask is None and not is_causal and q.dtype == jnp.float32 and jax.default_backend() == "cpu":
    return cpu_attention(qh, kh, vh).reshape(b, t, c)
  return jax.nn.dot_product_attention(qh, kh, vh, mask=mask, is_causal=is_causal).reshape(b, t, c)


CPU_QUERY_CHUNK = 128


def _softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """[B, T, N, H] x [B, S, N, H] -> [B, T, N, H] in [B, N, T, S] layout; the output of the unnormalised
  exponentials is divided by their sum (T x H divisions instead of T x S)."""
  qh, kh, vh = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
  logits = jnp.einsum("bnth,bnsh->bnts", qh * (q.shape[-1] ** -0.5), kh)
  e = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
  out = jnp.einsum("bnts,bnsh->bnth", e, vh) / e.sum(axis=-1)[..., None]
  return jnp.swapaxes(out, 1, 2)


def cpu_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Unmasked float32 attention for XLA:CPU, [B, T, N, H] in and out, the values of jax.nn.dot_product_attention.

  XLA:CPU's dot_product_attention is slow on the UNet's large self-attention (1,024 pixels at 256 px, 4,096 at
  512 px): 92 / 781 ms forward and 328 / 3,093 ms with its gradient on 2 cores, against 28 / 202 and 132 / 839
  ms here. The logits go head-major ([B, N, T, S], batched matmuls without transposes inside), and the queries in
  chunks of CPU_QUERY_CHUNK (lax.map), so each chunk's logits stay in cache instead of a [B, N, T, S] array
  going through memory three times.
  """
  b, t = q.shape[:2]
  if t <= CPU_QUERY_CHUNK or t % CPU_QUERY_CHUNK:
    return _softmax_attention(q, k, v)
  n = t // CPU_QUERY_CHUNK
  chunks = jnp.moveaxis(q.reshape(b, n, CPU_QUERY_CHUNK, *q.shape[2:]), 1, 0)
  out = jax.lax.map(lambda qc: _softmax_attention(qc, k, v), chunks)
  return jnp.moveaxis(out, 0, 1).reshape(q.shape)


def _use_cudnn(dtype) -> bool:
  """cuDNN flash attention for half-precision compute on GPU. implementation=None in jax.nn.dot_product_attention
  still means XLA (jax 0.10), so it is asked for explicitly; DIFFUSION_JAX_ATTENTION=xla turns it off."""
  return (os.environ.get("DIFFUSION_JAX_ATTENTION", "auto") != "xla" and jax.default_backend() == "gpu"
          and dtype in (jnp.bfloat16, jnp.float16))


def attention_probs(q: jax.Array, k: jax.Array, heads: int, *, is_causal: bool = False,
                    mask: Optional[jax.Array] = None) -> jax.Array:
  """softmax(Q K^T / sqrt(d)) in fp32: [B, heads, T, S]."""
  qh, kh = _split_heads(q, heads), _split_heads(k, heads)
  scale = qh.shape[-1] ** -0.5
  logits = jnp.einsum("btnh,bsnh->bnts", qh, kh, preferred_element_type=jnp.float32).astype(jnp.float32) * scale
  if is_causal:
    t, s = logits.shape[-2:]
    mask = jnp.tril(jnp.ones((t, s), bool)) if mask is None else mask & jnp.tril(jnp.ones((t, s), bool))
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(logits, axis=-1)


def resolution_matches(h: int, w: int, capture_at: Resolutions) -> bool:
  """Whether a layer of spatial size h x w is one of `capture_at` (ints r mean r*r pixels)."""
  for r in capture_at:
    if isinstance(r, int) and h * w == r * r:
      return True
    if isinstance(r, tuple) and tuple(r) == (h, w):
      return True
  return False


class Attention(nn.Module):
  """diffusers' `Attention` as used in SD transformer blocks: to_q/to_k/to_v without bias, to_out.0 with bias.

  context None means self-attention. capture True (cross-attention only) computes the probabilities
  explicitly and sows them as [B, heads, T, S] fp32 under `intermediates/.../cross_attn_probs`.
  """
  heads: int
  head_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: Optional[jax.Array] = None, capture: bool = False) -> jax.Array:
    inner = self.heads * self.head_dim
    dense = lambda feats, name, bias: nn.Dense(feats, use_bias=bias, dtype=self.dtype,
                                               param_dtype=self.param_dtype, name=name)
    ctx = x if context is None else context.astype(self.dtype)
    q = dense(inner, "to_q", False)(x)
    k = dense(inner, "to_k", False)(ctx)
    v = dense(inner, "to_v", False)(ctx)
    if capture:
      probs = attention_probs(q, k, self.heads)
      self.sow("intermediates", CAPTURE_NAME, probs)
      b, t, _ = q.shape
      out = jnp.einsum("bnts,bsnh->btnh", probs.astype(v.dtype), _split_heads(v, self.heads)).reshape(b, t, inner)
    else:
      out = dot_attention(q, k, v, self.heads)
    return dense(x.shape[-1], "to_out_0", True)(out)


class GEGLU(nn.Module):
  """Linear to 2 x inner features, then value * gelu(gate) (exact gelu, as diffusers)."""
  inner: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.Dense(2 * self.inner, dtype=self.dtype, param_dtype=self.param_dtype, name="proj")(x)
    value, gate = jnp.split(h, 2, axis=-1)
    return value * nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
  """diffusers FeedForward with GEGLU: net.0 (GEGLU, 4x width), net.2 (projection back)."""
  mult: int = 4
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    h = GEGLU(dim * self.mult, self.dtype, self.param_dtype, name="net_0")(x)
    return nn.Dense(dim, dtype=self.dtype, param_dtype=self.param_dtype, name="net_2")(h)


class BasicTransformerBlock(nn.Module):
  """Self-attention, cross-attention on the text, GEGLU feed-forward; pre-LayerNorm residual blocks."""
  heads: int
  head_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array, capture: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = x + Attention(self.heads, self.head_dim, name="attn1", **kw)(LayerNorm(name="norm1", **kw)(x))
    x = x + Attention(self.heads, self.head_dim, name="attn2", **kw)(LayerNorm(name="norm2", **kw)(x), context,
                                                                     capture)
    return x + FeedForward(name="ff", **kw)(LayerNorm(name="norm3", **kw)(x))


class Transformer2DModel(nn.Module):
  """GroupNorm, proj_in, one BasicTransformerBlock on the flattened pixels, proj_out, residual.

  proj_in/proj_out are Dense layers: a 1x1 convolution (SD 1.x, `use_linear_projection=False`) is the same map,
  so both checkpoint layouts load into this module (the converter reshapes the 1x1 kernels).
  """
  heads: int
  head_dim: int
  norm_num_groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array, capture_at: Resolutions = ()) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, h, w, c = x.shape
    inner = self.heads * self.head_dim
    y = GroupNorm(self.norm_num_groups, 1e-6, name="norm", **kw)(x)
    y = nn.Dense(inner, name="proj_in", **kw)(y.reshape(b, h * w, c))
    y = BasicTransformerBlock(self.heads, self.head_dim, name="transformer_blocks_0", **kw)(
        y, context, resolution_matches(h, w, capture_at))
    y = nn.Dense(c, name="proj_out", **kw)(y)
    return x + y.reshape(b, h, w, c)


def cross_attention_maps(intermediates: Any) -> dict[str, jax.Array]:
  """{layer path: [B, heads, pixels, tokens]} for every captured cross-attention layer."""
  flat = traverse_util.flatten_dict(intermediates, sep="/")
  out = {}
  for key, value in flat.items():
    if key.endswith(CAPTURE_NAME):
      for i, probs in enumerate(value if isinstance(value, tuple) else (value,)):
        out[key[:-len(CAPTURE_NAME) - 1] + (f"#{i}" if i else "")] = probs
  return out


def mean_cross_attention(intermediates: Any) -> jax.Array:
  """Mean over heads and layers of the captured maps: [B, pixels, tokens] (as Attend-and-Excite averages).

  All captured layers must have the same number of pixels (capture one resolution at a time for this).
  """
  maps = list(cross_attention_maps(intermediates).values())
  if not maps:
    raise ValueError("no cross-attention maps were captured: call the UNet with capture_cross_attn_at=(r,) for a "
                     "resolution r that its cross-attention layers have (e.g. 16 for 64x64 latents in SD), and "
                     "mutable=['intermediates'].")
  pixels = {m.shape[2] for m in maps}
  if len(pixels) > 1:
    raise ValueError(f"captured maps have different numbers of pixels {sorted(pixels)}; capture one resolution.")
  return jnp.concatenate(maps, axis=1).mean(axis=1)
