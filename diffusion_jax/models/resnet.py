"""Convolutional building blocks shared by the UNet and the VAE (diffusers' ResnetBlock2D, Downsample2D,
Upsample2D), NHWC."""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models.norms import GroupNorm

Dtype = Any


def conv(features: int, kernel: int, name: Optional[str], dtype: Dtype, param_dtype: Dtype, stride: int = 1,
         padding: Any = None) -> nn.Conv:
  """A square convolution with PyTorch's symmetric 'same' padding unless told otherwise."""
  pad = ((kernel // 2, kernel // 2),) * 2 if padding is None else padding
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad, dtype=dtype,
                 param_dtype=param_dtype, name=name)


class ResnetBlock2D(nn.Module):
  """GroupNorm-SiLU-conv twice, with an optional time embedding in between and a 1x1 shortcut when the channel
  count changes. temb None (the VAE) means no time projection. The time embedding is added before the second
  norm, or with `scale_shift` (diffusers' resnet_time_scale_shift="scale_shift", ADM's AdaGN) projected to a
  scale and a shift of the normalised features, which lets it switch channels on and off multiplicatively."""
  out_channels: int
  groups: int = 32
  eps: float = 1e-5
  scale_shift: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, temb: Optional[jax.Array] = None) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = nn.silu(GroupNorm(self.groups, self.eps, name="norm1", **kw)(x))
    h = conv(self.out_channels, 3, "conv1", **kw)(h)
    norm2 = GroupNorm(self.groups, self.eps, name="norm2", **kw)
    if temb is None:
      h = norm2(h)
    elif self.scale_shift:
      t = nn.Dense(2 * self.out_channels, name="time_emb_proj", **kw)(nn.silu(temb))[:, None, None, :]
      scale, shift = jnp.split(t, 2, axis=-1)
      h = norm2(h) * (1 + scale) + shift
    else:
      t = nn.Dense(self.out_channels, name="time_emb_proj", **kw)(nn.silu(temb))
      h = norm2(h + t[:, None, None, :])
    h = nn.silu(h)
    h = conv(self.out_channels, 3, "conv2", **kw)(h)
    if x.shape[-1] != self.out_channels:
      x = conv(self.out_channels, 1, "conv_shortcut", **kw)(x)
    return x + h


class Downsample2D(nn.Module):
  """Stride-2 3x3 convolution; padding 1 (UNet) or diffusers' asymmetric (0, 1) padding (VAE, padding=0)."""
  out_channels: int
  padding: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pad = ((1, 1), (1, 1)) if self.padding == 1 else ((0, 1), (0, 1))
    return conv(self.out_channels, 3, "conv", self.dtype, self.param_dtype, stride=2, padding=pad)(x)


class Upsample2D(nn.Module):
  """Nearest-neighbour 2x upsampling, then a 3x3 convolution."""
  out_channels: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)
    return conv(self.out_channels, 3, "conv", self.dtype, self.param_dtype)(x)
