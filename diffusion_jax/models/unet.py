"""The conditional UNet of Stable Diffusion 1.x/2.x (diffusers' UNet2DConditionModel), NHWC.

Submodule names follow diffusers (`down_blocks_1/attentions_0/transformer_blocks_0/attn2/to_q`), so weight
conversion is a mechanical rename (diffusion_jax/convert.py). Cross-attention maps can be captured at chosen
resolutions for Attend-and-Excite: see diffusion_jax/models/attention.py.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.model_configs import UNetConfig
from diffusion_jax.models.attention import Resolutions, Transformer2DModel
from diffusion_jax.models.embeddings import TextTimeEmbedding, TimestepEmbedding, timestep_embedding
from diffusion_jax.models.norms import GroupNorm
from diffusion_jax.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D, conv

Dtype = Any


def _blocks(remat: bool):
  """Resnet and transformer classes, rematerialised in the backward pass when `remat` (saves activations)."""
  if not remat:
    return ResnetBlock2D, Transformer2DModel
  # Argument 3 of Transformer2DModel.__call__ (self counts as 0) is the static tuple of capture resolutions.
  return nn.remat(ResnetBlock2D), nn.remat(Transformer2DModel, static_argnums=(3,))


class UNetBlock(nn.Module):
  """One down or up block: `num_layers` resnets, each followed by a transformer when `cross_attn`, then a
  down/upsampler. Up blocks (skips given) concatenate one skip activation before each resnet."""
  config: UNetConfig
  out_channels: int
  heads: int
  num_layers: int
  cross_attn: bool
  resample: Optional[str]  # "down", "up" or None
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  late_conv_kernels: bool = False

  @nn.compact
  def __call__(self, x, temb, context, skips: Optional[list] = None, capture_at: Resolutions = ()):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    resnet_cls, transformer_cls = _blocks(self.remat)
    outputs = []
    skips = list(skips) if skips is not None else None
    for j in range(self.num_layers):
      if skips is not None:
        x = jnp.concatenate([x, skips.pop()], axis=-1)
      x = resnet_cls(self.out_channels, cfg.norm_num_groups, cfg.norm_eps, cfg.scale_shift, name=f"resnets_{j}",
                     late_kernels=self.late_conv_kernels, **kw)(x, temb)
      if self.cross_attn:
        x = transformer_cls(self.heads, self.out_channels // self.heads, cfg.norm_num_groups,
                            name=f"attentions_{j}", **kw)(x, context, tuple(capture_at))
      outputs.append(x)
    if self.resample == "down":
      x = Downsample2D(self.out_channels, cfg.downsample_padding, name="downsamplers_0",
                       late_kernels=self.late_conv_kernels, **kw)(x)
      outputs.append(x)
    elif self.resample == "up":
      x = Upsample2D(self.out_channels, name="upsamplers_0", late_kernels=self.late_conv_kernels, **kw)(x)
    return x, outputs


class UNetMidBlock(nn.Module):
  """resnet, transformer, resnet at the lowest resolution (UNetMidBlock2DCrossAttn)."""
  config: UNetConfig
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  late_conv_kernels: bool = False

  @nn.compact
  def __call__(self, x, temb, context, capture_at: Resolutions = ()):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    resnet_cls, transformer_cls = _blocks(self.remat)
    c, heads = cfg.block_out_channels[-1], cfg.num_heads[-1]
    resnet = lambda name: resnet_cls(c, cfg.norm_num_groups, cfg.norm_eps, cfg.scale_shift, name=name,
                                     late_kernels=self.late_conv_kernels, **kw)
    x = resnet("resnets_0")(x, temb)
    x = transformer_cls(heads, c // heads, cfg.norm_num_groups, name="attentions_0", **kw)(
        x, context, tuple(capture_at))
    return resnet("resnets_1")(x, temb)


class UNet2DConditionModel(nn.Module):
  """Noise (or v) prediction eps(x_t, t, text). Inputs NHWC; returns fp32 NHWC.

  sample: [B, H, W, in_channels] latents (H, W multiples of config.downsample_factor);
  timesteps: scalar or [B]; encoder_hidden_states: [B, T, cross_attention_dim] text embeddings.
  capture_cross_attn_at: static tuple of resolutions whose cross-attention probabilities are sown to
  `intermediates` (see attention.py). remat: recompute block activations in the backward pass (training).
  late_conv_kernels: the backward pass builds each convolution's flipped kernel only when its cotangent
  exists, one at a time (resnet.late_kernel_conv; XLA:CPU otherwise keeps all of them: 1.7 GiB for SD 1.x).
  """
  config: UNetConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False
  late_conv_kernels: bool = False

  @nn.compact
  def __call__(self, sample: jax.Array, timesteps: jax.Array, encoder_hidden_states: jax.Array, *,
               capture_cross_attn_at: Resolutions = ()) -> jax.Array:
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, h, w, c = sample.shape
    f = cfg.downsample_factor
    if c != cfg.in_channels or h % f or w % f:
      raise ValueError(f"UNet input {sample.shape} must be [B, H, W, {cfg.in_channels}] (NHWC) with H and W "
                       f"multiples of {f}; for NCHW arrays use unet_apply_nchw.")
    if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[-1] != cfg.cross_attention_dim:
      raise ValueError(f"encoder_hidden_states {encoder_hidden_states.shape} must be [B, tokens, "
                       f"{cfg.cross_attention_dim}] (the text encoder's hidden size must equal the UNet's "
                       "cross_attention_dim).")
    t = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32).reshape(-1), (b,))
    temb = timestep_embedding(t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
    temb = TimestepEmbedding(4 * cfg.block_out_channels[0], name="time_embedding", **kw)(temb.astype(self.dtype))
    context = encoder_hidden_states.astype(self.dtype)
    if cfg.addition_embed_type == "text":
      temb = temb + TextTimeEmbedding(4 * cfg.block_out_channels[0], cfg.addition_embed_type_num_heads,
                                      name="add_embedding", **kw)(context)
    capture = tuple(capture_cross_attn_at)

    x = sample.astype(self.dtype)
    if cfg.center_input_sample:
      x = 2 * x - 1.0
    late = dict(late_conv_kernels=self.late_conv_kernels)
    x = conv(cfg.block_out_channels[0], 3, "conv_in", **kw, late_kernels=self.late_conv_kernels)(x)
    skips = [x]
    n = len(cfg.block_out_channels)
    for i, btype in enumerate(cfg.down_block_types):
      x, outs = UNetBlock(cfg, cfg.block_out_channels[i], cfg.num_heads[i], cfg.layers_per_block,
                          btype == "CrossAttnDownBlock2D", "down" if i < n - 1 else None, self.remat,
                          name=f"down_blocks_{i}", **late, **kw)(x, temb, context, None, capture)
      skips += outs
    x = UNetMidBlock(cfg, self.remat, name="mid_block", **late, **kw)(x, temb, context, capture)
    rev_channels, rev_heads = cfg.block_out_channels[::-1], cfg.num_heads[::-1]
    for i, btype in enumerate(cfg.up_block_types):
      k = cfg.layers_per_block + 1
      block_skips, skips = skips[-k:], skips[:-k]
      x, _ = UNetBlock(cfg, rev_channels[i], rev_heads[i], k, btype == "CrossAttnUpBlock2D",
                       "up" if i < n - 1 else None, self.remat, name=f"up_blocks_{i}", **late, **kw)(
                           x, temb, context, block_skips, capture)
    x = nn.silu(GroupNorm(cfg.norm_num_groups, cfg.norm_eps, name="conv_norm_out", **kw)(x))
    x = conv(cfg.out_channels, 3, "conv_out", **kw, late_kernels=self.late_conv_kernels)(x)
    return x.astype(jnp.float32)


def unet_apply_nchw(module: UNet2DConditionModel, params: Any, sample: jax.Array, timesteps: jax.Array,
                    encoder_hidden_states: jax.Array, **kwargs) -> Any:
  """`module.apply` with diffusers' NCHW layout for `sample` and the result (kwargs go to apply)."""
  out = module.apply(params, jnp.transpose(sample, (0, 2, 3, 1)), timesteps, encoder_hidden_states, **kwargs)
  if isinstance(out, tuple):  # (output, mutated collections) when mutable= is given
    return (jnp.transpose(out[0], (0, 3, 1, 2)),) + tuple(out[1:])
  return jnp.transpose(out, (0, 3, 1, 2))
