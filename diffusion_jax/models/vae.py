"""The KL autoencoder of Stable Diffusion (diffusers' AutoencoderKL), NHWC.

encode(images in [-1, 1]) -> DiagonalGaussian(mean, logvar) over latents; decode(latents) -> images. The
latents the UNet sees are `posterior.sample(rng) * config.scaling_factor` (0.18215 for SD 1.x/2.x), and decode
takes `latents / scaling_factor`: the scaling is left to the caller, as in diffusers.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.model_configs import VAEConfig
from diffusion_jax.models.attention import dot_attention
from diffusion_jax.models.norms import GroupNorm
from diffusion_jax.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D, conv

Dtype = Any
EPS = 1e-6  # every norm of the diffusers VAE uses eps 1e-6


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DiagonalGaussian:
  """The encoder's latent distribution; mean and logvar are [B, h, w, latent_channels] fp32."""
  mean: jax.Array
  logvar: jax.Array

  @property
  def std(self) -> jax.Array:
    return jnp.exp(0.5 * self.logvar)

  def sample(self, rng: jax.Array) -> jax.Array:
    return self.mean + self.std * jax.random.normal(rng, self.mean.shape, self.mean.dtype)

  def mode(self) -> jax.Array:
    return self.mean

  def kl(self) -> jax.Array:
    """KL to N(0, I), summed over latent dims: [B]."""
    return 0.5 * jnp.sum(jnp.square(self.mean) + jnp.exp(self.logvar) - 1.0 - self.logvar, axis=(1, 2, 3))


class VAEAttention(nn.Module):
  """Single-head self-attention over pixels with GroupNorm and a residual (the VAE mid block's attention)."""
  groups: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, h, w, c = x.shape
    y = GroupNorm(self.groups, EPS, name="group_norm", **kw)(x).reshape(b, h * w, c)
    q, k, v = (nn.Dense(c, name=n, **kw)(y) for n in ("to_q", "to_k", "to_v"))
    y = nn.Dense(c, name="to_out_0", **kw)(dot_attention(q, k, v, heads=1))
    return x + y.reshape(b, h, w, c)


class VAEMidBlock(nn.Module):
  """resnet, attention (optional), resnet, without time embedding."""
  channels: int
  groups: int
  add_attention: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = ResnetBlock2D(self.channels, self.groups, EPS, name="resnets_0", **kw)(x)
    if self.add_attention:
      x = VAEAttention(self.groups, name="attentions_0", **kw)(x)
    return ResnetBlock2D(self.channels, self.groups, EPS, name="resnets_1", **kw)(x)


class VAEBlock(nn.Module):
  """DownEncoderBlock2D / UpDecoderBlock2D: resnets then an optional down/upsampler."""
  out_channels: int
  groups: int
  num_layers: int
  resample: Any = None  # "down", "up" or None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for j in range(self.num_layers):
      x = ResnetBlock2D(self.out_channels, self.groups, EPS, name=f"resnets_{j}", **kw)(x)
    if self.resample == "down":
      x = Downsample2D(self.out_channels, padding=0, name="downsamplers_0", **kw)(x)
    elif self.resample == "up":
      x = Upsample2D(self.out_channels, name="upsamplers_0", **kw)(x)
    return x


class Encoder(nn.Module):
  config: VAEConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    ch, n = cfg.block_out_channels, len(cfg.block_out_channels)
    x = conv(ch[0], 3, "conv_in", **kw)(x)
    for i in range(n):
      x = VAEBlock(ch[i], cfg.norm_num_groups, cfg.layers_per_block, "down" if i < n - 1 else None,
                   name=f"down_blocks_{i}", **kw)(x)
    x = VAEMidBlock(ch[-1], cfg.norm_num_groups, cfg.mid_block_add_attention, name="mid_block", **kw)(x)
    x = nn.silu(GroupNorm(cfg.norm_num_groups, EPS, name="conv_norm_out", **kw)(x))
    return conv(2 * cfg.latent_channels, 3, "conv_out", **kw)(x)


class Decoder(nn.Module):
  config: VAEConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    ch, n = cfg.block_out_channels[::-1], len(cfg.block_out_channels)
    x = conv(ch[0], 3, "conv_in", **kw)(z)
    x = VAEMidBlock(ch[0], cfg.norm_num_groups, cfg.mid_block_add_attention, name="mid_block", **kw)(x)
    for i in range(n):
      x = VAEBlock(ch[i], cfg.norm_num_groups, cfg.layers_per_block + 1, "up" if i < n - 1 else None,
                   name=f"up_blocks_{i}", **kw)(x)
    x = nn.silu(GroupNorm(cfg.norm_num_groups, EPS, name="conv_norm_out", **kw)(x))
    return conv(cfg.out_channels, 3, "conv_out", **kw)(x)


class AutoencoderKL(nn.Module):
  """Images [B, H, W, 3] in [-1, 1] <-> latents [B, H/f, W/f, latent_channels], f = config.downsample_factor.

  Call with method=AutoencoderKL.encode / .decode; __call__ (used by init) reconstructs through the mean.
  """
  config: VAEConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder = Encoder(cfg, **kw)
    self.decoder = Decoder(cfg, **kw)
    if cfg.use_quant_conv:
      self.quant_conv = conv(2 * cfg.latent_channels, 1, None, **kw)
    if cfg.use_post_quant_conv:
      self.post_quant_conv = conv(cfg.latent_channels, 1, None, **kw)

  def encode(self, images: jax.Array) -> DiagonalGaussian:
    cfg = self.config
    f = cfg.downsample_factor
    if images.ndim != 4 or images.shape[-1] != cfg.in_channels or images.shape[1] % f or images.shape[2] % f:
      raise ValueError(f"VAE input {images.shape} must be [B, H, W, {cfg.in_channels}] (NHWC) with H and W "
                       f"multiples of {f}.")
    moments = self.encoder(images.astype(self.dtype))
    if cfg.use_quant_conv:
      moments = self.quant_conv(moments)
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return DiagonalGaussian(mean, jnp.clip(logvar, -30.0, 20.0))

  def decode(self, latents: jax.Array) -> jax.Array:
    cfg = self.config
    if latents.ndim != 4 or latents.shape[-1] != cfg.latent_channels:
      raise ValueError(f"VAE latents {latents.shape} must be [B, h, w, {cfg.latent_channels}] (NHWC).")
    z = latents.astype(self.dtype)
    if cfg.use_post_quant_conv:
      z = self.post_quant_conv(z)
    return self.decoder(z).astype(jnp.float32)

  def __call__(self, images: jax.Array) -> jax.Array:
    return self.decode(self.encode(images).mean)
