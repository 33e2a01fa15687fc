"""Convolutional building blocks shared by the UNet and the VAE (diffusers' ResnetBlock2D, Downsample2D,
Upsample2D), NHWC."""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models.norms import GroupNorm
from t2i_common import cpu_conv

Dtype = Any


def late_kernel_conv(lhs: jax.Array, rhs: jax.Array, *args, **kwargs) -> jax.Array:
  """lax.conv_general_dilated whose input gradient builds its flipped kernel only once the cotangent exists.

  The input gradient of a convolution is a convolution of the cotangent with the spatially flipped,
  in/out-swapped kernel. XLA:CPU materialises that kernel, and as it depends on the weights only, its scheduler
  builds all of them before the forward pass and keeps them to the end: for the SD 1.x UNet 1.7 GiB of weight
  copies, whatever the batch (an optimization_barrier does not help: XLA:CPU removes it before scheduling).
  Here the kernel is offset by a zero computed from the cotangent (0 whatever the cotangent holds, NaN and inf
  included), a data dependency that makes each copy wait for its own cotangent and die after its use.
  Same values as lax.conv_general_dilated; the input itself is saved for the backward pass only when the
  kernel is differentiated too (weight gradients need it).
  """
  conv_fn = lambda x, k: cpu_conv.conv_general_dilated(x, k, *args, **kwargs)

  @jax.custom_vjp
  def f(x, k):
    return conv_fn(x, k)

  def fwd(x, k):
    saved = x.value if k.perturbed else jax.ShapeDtypeStruct(x.value.shape, x.value.dtype)
    return conv_fn(x.value, k.value), (saved, k.value)

  def bwd(res, g):
    x, k = res
    if isinstance(g, jax.custom_derivatives.SymbolicZero):
      return None, None
    zero = jnp.isnan(g[(0,) * g.ndim]).astype(k.dtype) * 0  # XLA does not fold a float product by 0
    if isinstance(x, jax.ShapeDtypeStruct):
      (x_bar,) = jax.linear_transpose(lambda a: conv_fn(a, k + zero), x)(g)
      return x_bar, None
    return jax.vjp(lambda a, b: conv_fn(a, b + zero), x, k)[1](g)

  f.defvjp(fwd, bwd, symbolic_zeros=True)
  return f(lhs, rhs)


def conv(features: int, kernel: int, name: Optional[str], dtype: Dtype, param_dtype: Dtype, stride: int = 1,
         padding: Any = None, late_kernels: bool = False) -> nn.Conv:
  """A square convolution with PyTorch's symmetric 'same' padding unless told otherwise; late_kernels: its
  backward builds the flipped kernel late (see `late_kernel_conv`). Deep convolutions on small maps run as one
  matmul on the CPU (t2i_common.cpu_conv)."""
  pad = ((kernel // 2, kernel // 2),) * 2 if padding is None else padding
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad, dtype=dtype,
                 param_dtype=param_dtype, name=name,
                 conv_general_dilated=late_kernel_conv if late_kernels else cpu_conv.conv_general_dilated)


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
  late_kernels: bool = False  # see late_kernel_conv

  @nn.compact
  def __call__(self, x: jax.Array, temb: Optional[jax.Array] = None) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = nn.silu(GroupNorm(self.groups, self.eps, name="norm1", **kw)(x))
    h = conv(self.out_channels, 3, "conv1", **kw, late_kernels=self.late_kernels)(h)
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
    h = conv(self.out_channels, 3, "conv2", **kw, late_kernels=self.late_kernels)(h)
    if x.shape[-1] != self.out_channels:
      x = conv(self.out_channels, 1, "conv_shortcut", **kw, late_kernels=self.late_kernels)(x)
    return x + h


class Downsample2D(nn.Module):
  """Stride-2 3x3 convolution; padding 1 (UNet) or diffusers' asymmetric (0, 1) padding (VAE, padding=0)."""
  out_channels: int
  padding: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  late_kernels: bool = False  # see late_kernel_conv

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pad = ((1, 1), (1, 1)) if self.padding == 1 else ((0, 1), (0, 1))
    return conv(self.out_channels, 3, "conv", self.dtype, self.param_dtype, stride=2, padding=pad,
                late_kernels=self.late_kernels)(x)


class Upsample2D(nn.Module):
  """Nearest-neighbour 2x upsampling, then a 3x3 convolution."""
  out_channels: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  late_kernels: bool = False  # see late_kernel_conv

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)
    return conv(self.out_channels, 3, "conv", self.dtype, self.param_dtype, late_kernels=self.late_kernels)(x)
