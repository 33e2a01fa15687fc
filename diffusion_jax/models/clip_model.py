"""CLIP's two towers with their projections (transformers' CLIPModel), loaded strictly from a transformers folder.

    model, variables = load_clip("clip-vit-base-patch16")      # CLIPModel.save_pretrained output
    text = model.apply(variables, ids, method=CLIPModel.get_text_features)        # [B, projection_dim]
    image = model.apply(variables, pixels, method=CLIPModel.get_image_features)   # pixels NHWC, preprocessed
    out = model.apply(variables, ids, pixels)   # logits_per_image / logits_per_text, as transformers' forward

Text tower: models/clip_text.py's CLIPTextTransformer (pooled at the end-of-text token); image tower:
models/clip_vision.py; features are the pooled outputs through the bias-free `text_projection` /
`visual_projection`; logits are cosine similarities times exp(logit_scale). Parameter names are transformers'
with `.N.` list indices as `_N` (convert.make_rename), so the folder's every tensor must find its place and every
parameter must be filled: anything else raises t2i_common.weights.WeightMismatchError with the names.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.convert import TRANSFORMERS_STEMS, make_rename, read_folder_state_dict
from diffusion_jax.model_configs import TextConfig, UnsupportedConfigError, read_json
from diffusion_jax.models.clip_text import CLIPTextTransformer
from diffusion_jax.models.clip_vision import CLIPVisionTransformer, VisionConfig
from t2i_common.weights import convert_strict

Dtype = Any

# transformers' CLIPTextConfig defaults (TextConfig's own defaults are SD 1.x's ViT-L/14 text tower); a config.json
# written with only the differences from the defaults is read as transformers reads it.
CLIP_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                          num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                          layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
                          projection_dim=512)
# Old checkpoints keep non-persistent position_ids buffers in their state dicts.
_IGNORE = (r"(^|\.)position_ids$",)


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """transformers CLIPConfig: the two towers' configs and the shared embedding width."""
  text: TextConfig
  vision: VisionConfig
  projection_dim: int = 512
  logit_scale_init_value: float = 2.6592

  @classmethod
  def from_transformers(cls, raw: dict, source: str = "config.json") -> "CLIPConfig":
    arch = raw.get("architectures") or ["CLIPModel"]
    if raw.get("model_type") != "clip" or arch[0] != "CLIPModel":
      raise UnsupportedConfigError(
          f"{source}: model_type={raw.get('model_type')!r}, architectures={arch}; expected a transformers CLIPModel "
          "folder (model_type 'clip', as written by CLIPModel.save_pretrained, e.g. openai/clip-vit-base-patch16).")

    def sub(key: str, defaults: dict, config_cls) -> Any:
      # transformers applies `<key>_dict` (old hub configs) over `<key>`, both over the class defaults.
      values = dict(defaults)
      for part in (raw.get(key) or {}, raw.get(key + "_dict") or {}):
        values.update(part)
      fields = {f.name for f in dataclasses.fields(config_cls)}
      kwargs = {k: v for k, v in values.items() if k in fields}
      if isinstance(kwargs.get("eos_token_id"), list):
        raise UnsupportedConfigError(f"{source}: a list of eos_token_id values is not supported.")
      return config_cls(**kwargs)

    return cls(text=sub("text_config", CLIP_TEXT_DEFAULTS, TextConfig),
               vision=sub("vision_config", {}, VisionConfig),
               projection_dim=int(raw.get("projection_dim", 512)),
               logit_scale_init_value=float(raw.get("logit_scale_init_value", 2.6592)))


class CLIPModel(nn.Module):
  """CLIP image and text towers with projections (see the module docstring). Outputs are float32."""
  config: CLIPConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.text_model = CLIPTextTransformer(cfg.text, **kw)
    self.vision_model = CLIPVisionTransformer(cfg.vision, **kw)
    self.text_projection = nn.Dense(cfg.projection_dim, use_bias=False, **kw)
    self.visual_projection = nn.Dense(cfg.projection_dim, use_bias=False, **kw)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(cfg.logit_scale_init_value), (),
                                  self.param_dtype)

  def get_text_features(self, input_ids: jax.Array, attention_mask: Optional[jax.Array] = None) -> jax.Array:
    """[B, T] token ids -> [B, projection_dim] text embeddings (not normalised), as transformers'."""
    pooled = self.text_model(input_ids, attention_mask)["pooler_output"]
    return self.text_projection(pooled.astype(self.dtype)).astype(jnp.float32)

  def get_image_features(self, pixel_values: jax.Array) -> jax.Array:
    """NHWC preprocessed pixels -> [B, projection_dim] image embeddings (not normalised)."""
    pooled = self.vision_model(pixel_values)["pooler_output"]
    return self.visual_projection(pooled.astype(self.dtype)).astype(jnp.float32)

  def __call__(self, input_ids: jax.Array, pixel_values: jax.Array,
               attention_mask: Optional[jax.Array] = None) -> dict:
    """transformers' CLIPModel.forward: cosine similarities scaled by exp(logit_scale)."""
    text = normalize(self.get_text_features(input_ids, attention_mask))
    image = normalize(self.get_image_features(pixel_values))
    logits_per_text = text @ image.T * jnp.exp(self.logit_scale.astype(jnp.float32))
    return {"logits_per_image": logits_per_text.T, "logits_per_text": logits_per_text,
            "text_embeds": text, "image_embeds": image}


def normalize(x: jax.Array) -> jax.Array:
  """Rows divided by their L2 norm (CLIP's embedding normalisation)."""
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def clip_config(folder: str) -> CLIPConfig:
  """CLIPConfig of a transformers CLIPModel folder (or its config.json)."""
  path = folder if folder.endswith(".json") else os.path.join(folder, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path!r} does not exist; expected a transformers CLIPModel folder (config.json + "
                            "model.safetensors, as CLIPModel.save_pretrained writes them, e.g. "
                            "openai/clip-vit-base-patch16).")
  return CLIPConfig.from_transformers(read_json(path), source=path)


def abstract_clip_variables(module: CLIPModel) -> dict:
  """{"params": ShapeDtypeStruct tree} of a CLIPModel, without allocating it."""
  cfg = module.config
  ids = jnp.zeros((1, 1), jnp.int32)
  pixels = jnp.zeros((1, cfg.vision.image_size, cfg.vision.image_size, cfg.vision.num_channels))
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ids, pixels))


def clip_from_state_dict(state_dict: dict, module: CLIPModel, source: str = "the CLIP state dict") -> dict:
  """transformers CLIPModel state dict -> {"params": ...} for `module`, strictly."""
  template = abstract_clip_variables(module)["params"]
  rename = make_rename(template)

  def rename_clip(name: str, tensor: np.ndarray):
    if name == "logit_scale":  # the one top-level bare parameter: no module path to derive
      return ("logit_scale",), np.reshape(tensor, ())
    return rename(name, tensor)

  return {"params": convert_strict(state_dict, template, rename_clip, source=source, ignore=_IGNORE)}


def load_clip(folder: str, dtype: Any = jnp.float32, *, param_dtype: Any = jnp.float32
              ) -> tuple[CLIPModel, dict]:
  """transformers CLIPModel folder (config.json + model.safetensors or pytorch_model.bin) -> (CLIPModel,
  {"params": host numpy tree})."""
  module = CLIPModel(clip_config(folder), dtype=dtype, param_dtype=param_dtype)
  return module, clip_from_state_dict(read_folder_state_dict(folder, TRANSFORMERS_STEMS), module, folder)
