"""Building blocks of the AttnGAN generator and discriminators (reference code/model.py), channels-last.

All convolutions except the discriminators' output layers have no bias; weights start orthogonal and
BatchNorm scales N(1, 0.02) as the reference's weights_init (attngan_jax.initializers).

BatchNorm follows PyTorch exactly (`BatchNorm`): train mode normalises with the biased batch variance and
updates the running statistics with momentum 0.1 and the *unbiased* variance; eval mode uses the running
statistics. Every module that holds BatchNorms takes `train: bool`; in train mode call `apply` with
`mutable=["batch_stats"]`. The statistics are taken over every axis but the channels, so under `jax.jit` with a
batch sharded over devices they are those of the global batch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from attngan_jax.initializers import normal, orthogonal
from t2i_common import cpu_conv

LEAKY_SLOPE = 0.2  # the discriminators' LeakyReLU


def glu(x: jax.Array) -> jax.Array:
  """GLU over the channels (last axis): first half * sigmoid(second half)."""
  c = x.shape[-1]
  if c % 2:
    raise ValueError(f"GLU needs an even number of channels, got {c}.")
  return x[..., :c // 2] * jax.nn.sigmoid(x[..., c // 2:])


def upsample_nearest2x(x: jax.Array) -> jax.Array:
  """nn.Upsample(scale_factor=2, mode='nearest') on NHWC."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def conv3x3(features: int, name: str) -> nn.Conv:
  """3x3, stride 1, padding 1, no bias (the reference conv3x3); deep ones on small maps run as one matmul on the
  CPU (t2i_common.cpu_conv: the discriminators' 4 x 4 heads, the first stage's 8 x 8 upsampling)."""
  return nn.Conv(features, (3, 3), padding=1, use_bias=False, kernel_init=orthogonal(), name=name,
                 conv_general_dilated=cpu_conv.conv_general_dilated)


def conv1x1(features: int, name: str) -> nn.Conv:
  """1x1, no bias (the reference conv1x1)."""
  return nn.Conv(features, (1, 1), padding=0, use_bias=False, kernel_init=orthogonal(), name=name)


def conv4x4_down(features: int, name: str) -> nn.Conv:
  """4x4, stride 2, padding 1, no bias: halves the resolution (the discriminators' downsampling conv)."""
  return nn.Conv(features, (4, 4), strides=2, padding=1, use_bias=False, kernel_init=orthogonal(), name=name)


class BatchNorm(nn.Module):
  """PyTorch's BatchNorm1d/2d over the last axis (momentum 0.1, eps 1e-5, affine, running statistics).

  Variables: params scale [C], bias [C]; batch_stats mean [C], var [C] (PyTorch's weight, bias,
  running_mean, running_var).
  """
  momentum: float = 0.1
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", normal(1.0, 0.02), (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    running_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    if train:
      n = x.size // c
      if n < 2:
        raise ValueError(f"BatchNorm in train mode needs more than one value per channel, got input shape "
                         f"{x.shape} (PyTorch refuses this too): use a batch of at least 2 or train=False.")
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x, axis=axes)
      var = jnp.mean(jnp.square(x - mean), axis=axes)  # biased: what the normalisation uses
      if not self.is_initializing():
        m = self.momentum
        running_mean.value = (1 - m) * running_mean.value + m * jax.lax.stop_gradient(mean)
        # PyTorch stores the unbiased variance in the running average.
        running_var.value = (1 - m) * running_var.value + m * jax.lax.stop_gradient(var) * (n / (n - 1))
    else:
      mean, var = running_mean.value, running_var.value
    return (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias


class UpBlock(nn.Module):
  """upBlock: nearest x2 -> conv3x3(in -> 2 out) -> BN -> GLU. [B, H, W, in] -> [B, 2H, 2W, out]."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = conv3x3(2 * self.features, "conv")(upsample_nearest2x(x))
    return glu(BatchNorm(name="bn")(x, train))


class ResBlock(nn.Module):
  """ResBlock: conv3x3(C -> 2C), BN, GLU, conv3x3(C -> C), BN, + input (no activation after the sum)."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    c = x.shape[-1]
    h = glu(BatchNorm(name="bn1")(conv3x3(2 * c, "conv1")(x), train))
    h = BatchNorm(name="bn2")(conv3x3(c, "conv2")(h), train)
    return h + x


class DownBlock(nn.Module):
  """downBlock: conv 4x4 stride 2 (no bias) -> BN -> LeakyReLU 0.2. Halves the resolution."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = BatchNorm(name="bn")(conv4x4_down(self.features, "conv")(x), train)
    return nn.leaky_relu(x, LEAKY_SLOPE)


class Block3x3LeakyReLU(nn.Module):
  """Block3x3_leakRelu: conv3x3 (no bias) -> BN -> LeakyReLU 0.2. Keeps the resolution."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = BatchNorm(name="bn")(conv3x3(self.features, "conv")(x), train)
    return nn.leaky_relu(x, LEAKY_SLOPE)
