"""CLIP image transformer (transformers' CLIPVisionTransformer): the ViT image tower of CLIP.

    module = CLIPVisionTransformer(VisionConfig(image_size=224, patch_size=16))   # ViT-B/16's tower
    out = module.apply(variables, pixel_values_nhwc)   # {"last_hidden_state": [B, 1 + P, D], "pooler_output": [B, D]}

Patch embedding (a stride-p convolution without bias), a learned class token in front, learned position
embeddings, `pre_layrnorm` (transformers' spelling, kept so that parameter names map one-to-one), the encoder
layers of the text tower (models/clip_text.py) without the causal mask, and `post_layernorm` of the class token
as pooler_output. Pixel values are NHWC, already preprocessed (clip_score.preprocess_images).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.model_configs import TEXT_ACTIVATIONS, UnsupportedConfigError
from diffusion_jax.models.clip_text import CLIPEncoder
from diffusion_jax.models.norms import LayerNorm

Dtype = Any


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """transformers CLIPVisionConfig options; the defaults are transformers' (ViT-B/32 sizes)."""
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  num_channels: int = 3
  image_size: int = 224
  patch_size: int = 32
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5

  def __post_init__(self):
    if self.hidden_act not in TEXT_ACTIVATIONS:
      raise UnsupportedConfigError(f"vision config: hidden_act={self.hidden_act!r} is not supported "
                                   f"({', '.join(TEXT_ACTIVATIONS)}).")
    if self.hidden_size % self.num_attention_heads:
      raise UnsupportedConfigError(f"vision config: hidden_size {self.hidden_size} is not divisible by "
                                   f"num_attention_heads {self.num_attention_heads}.")
    for name in ("image_size", "patch_size"):
      if not isinstance(getattr(self, name), int):
        raise UnsupportedConfigError(f"vision config: {name}={getattr(self, name)!r}; only square sizes (one int) "
                                     "are supported, as in OpenAI's CLIP checkpoints.")
    if self.image_size % self.patch_size:
      raise UnsupportedConfigError(f"vision config: image_size {self.image_size} is not a multiple of patch_size "
                                   f"{self.patch_size}.")

  @property
  def num_positions(self) -> int:
    return (self.image_size // self.patch_size) ** 2 + 1


class CLIPVisionEmbeddings(nn.Module):
  config: VisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    cfg = self.config
    p = cfg.patch_size
    patches = nn.Conv(cfg.hidden_size, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                      dtype=self.dtype, param_dtype=self.param_dtype, name="patch_embedding")(pixel_values)
    b = patches.shape[0]
    patches = patches.reshape(b, -1, cfg.hidden_size)  # row-major over the patch grid, as torch's flatten(2)
    cls = self.param("class_embedding", nn.initializers.normal(cfg.hidden_size ** -0.5), (cfg.hidden_size,),
                     self.param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(patches.dtype), (b, 1, cfg.hidden_size)), patches], axis=1)
    pos = nn.Embed(cfg.num_positions, cfg.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
                   name="position_embedding")(jnp.arange(cfg.num_positions))
    return x + pos[None]


class CLIPVisionTransformer(nn.Module):
  """pixel_values [B, S, S, C] (S = image_size) -> {"last_hidden_state", "pooler_output"} (float32)."""
  config: VisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pixel_values: jax.Array) -> dict:
    cfg = self.config
    want = (cfg.image_size, cfg.image_size, cfg.num_channels)
    if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != want:
      raise ValueError(f"pixel_values {tuple(pixel_values.shape)} must be NHWC [B, {want[0]}, {want[1]}, {want[2]}] "
                       "for this CLIP image tower; preprocess images with clip_score.preprocess_images.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = CLIPVisionEmbeddings(cfg, name="embeddings", **kw)(pixel_values.astype(self.dtype))
    x = LayerNorm(cfg.layer_norm_eps, name="pre_layrnorm", **kw)(x)
    x = CLIPEncoder(cfg, cfg.num_hidden_layers, causal=False, name="encoder", **kw)(x, None)[-1]
    pooled = LayerNorm(cfg.layer_norm_eps, name="post_layernorm", **kw)(x[:, 0])
    return {"last_hidden_state": x.astype(jnp.float32), "pooler_output": pooled.astype(jnp.float32)}
