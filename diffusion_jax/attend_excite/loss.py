"""Attend-and-Excite's loss on captured cross-attention maps (Chefer et al. 2023, Sec. 3; diffusers' port).

    maxes = max_attention_per_token(maps, indices, last, res=(16, 16))   # [B, K] smoothed spatial maxima
    loss = subject_loss(maxes, mask)                                      # [B]: max_k relu(1 - maxes[:, k])

maps are the cross-attention probabilities of the chosen resolution averaged over heads and layers
([B, pixels, tokens], `diffusion_jax.models.mean_cross_attention`). Token positions run over the whole padded
prompt (0 = <|startoftext|>); the softmax over text tokens covers positions 1 .. last - 1 only, which is the
reference's slice [1:last] followed by its index shift of -1, without the shift. Every image of the batch has its
own subject indices (padded to K, `mask` False on padding) and its own `last`.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

# The reference multiplies the maps by 100 before the softmax over text tokens (a temperature of 0.01).
SOFTMAX_SCALE = 100.0


def gaussian_kernel(kernel_size: int = 3, sigma: float = 0.5) -> np.ndarray:
  """The reference's 2-D smoothing kernel [k, k]: the outer product of exp(-((x - mu) / (2 sigma))^2), normalised.

  Note the 2 sigma (not sqrt(2) sigma) of the reference: for k=3, sigma=0.5 the 1-D weights are
  [0.211942, 0.576117, 0.211942]."""
  if kernel_size < 1 or kernel_size % 2 == 0:
    raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}.")
  if not sigma > 0:
    raise ValueError(f"sigma must be > 0, got {sigma}.")
  x = np.arange(kernel_size, dtype=np.float64)
  w = np.exp(-(((x - (kernel_size - 1) / 2) / (2 * sigma)) ** 2))
  w /= w.sum()
  return np.outer(w, w).astype(np.float32)


def smooth(maps: jax.Array, kernel_size: int = 3, sigma: float = 0.5) -> jax.Array:
  """Gaussian smoothing of [B, H, W, K] maps per map (depthwise), reflect padding (k - 1) / 2, same size out.

  The reference pads by 1 whatever the kernel size; for its kernel_size 3 the two agree."""
  kernel = gaussian_kernel(kernel_size, sigma)
  p = (kernel_size - 1) // 2
  h, w = maps.shape[1:3]
  padded = jnp.pad(maps, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
  # k*k shifted, weighted slices: tiny kernels, and cheaper to differentiate than a grouped convolution.
  out = 0.0
  for dy in range(kernel_size):
    for dx in range(kernel_size):
      out = out + float(kernel[dy, dx]) * padded[:, dy:dy + h, dx:dx + w, :]
  return out


def token_attention(maps: jax.Array, last: jax.Array) -> jax.Array:
  """[B, P, T] maps -> [B, P, T] softmax over text tokens 1 .. last - 1 of 100 x maps (0 elsewhere)."""
  pos = jnp.arange(maps.shape[-1])
  valid = (pos >= 1)[None, :] & (pos[None, :] < jnp.asarray(last).reshape(-1, 1))  # [B, T]
  logits = jnp.where(valid[:, None, :], SOFTMAX_SCALE * maps.astype(jnp.float32), -jnp.inf)
  return jax.nn.softmax(logits, axis=-1)


def subject_maps(maps: jax.Array, indices: jax.Array, last: jax.Array, res: tuple[int, int], *,
                 smooth_attentions: bool = True, kernel_size: int = 3, sigma: float = 0.5) -> jax.Array:
  """[B, P, T] maps -> [B, H, W, K] (smoothed) token-softmax maps of the subject tokens `indices` [B, K]."""
  b, pixels, _ = maps.shape
  if pixels != res[0] * res[1]:
    raise ValueError(f"maps have {pixels} pixels; attn_res {res} needs {res[0] * res[1]}.")
  probs = token_attention(maps, last)
  sel = jnp.take_along_axis(probs, jnp.asarray(indices)[:, None, :], axis=2)  # [B, P, K]
  sel = sel.reshape(b, res[0], res[1], -1)
  return smooth(sel, kernel_size, sigma) if smooth_attentions else sel


def max_attention_per_token(maps: jax.Array, indices: jax.Array, last: jax.Array, res: tuple[int, int],
                            **kwargs) -> jax.Array:
  """[B, K]: the spatial maximum of each subject token's (smoothed) map (kwargs: see `subject_maps`)."""
  return subject_maps(maps, indices, last, res, **kwargs).max(axis=(1, 2))


def subject_loss(maxes: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
  """[B]: max over the subjects of max(0, 1 - max attention); padding subjects (mask False) count as 0.

  Exactly 0 when every subject reaches 1, which is when the reference skips the update."""
  per = jnp.maximum(0.0, 1.0 - maxes)
  if mask is not None:
    per = jnp.where(mask, per, 0.0)
  return per.max(axis=-1)
