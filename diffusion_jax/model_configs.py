"""Configs of the UNet, VAE and CLIP text encoder, read from (and written back to) diffusers/transformers
config.json files.

Only the options Stable Diffusion 1.x/2.x use are supported; any other value of a known option raises
UnsupportedConfigError naming the option, so a checkpoint is never silently run with the wrong architecture.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

DIFFUSERS_VERSION = "0.30.0"  # written into saved config.json files; any diffusers >= 0.20 reads them


class UnsupportedConfigError(ValueError):
  """A config.json asks for an architecture option these models do not implement."""


def read_json(folder_or_file: str, name: str = "config.json") -> dict:
  path = folder_or_file if folder_or_file.endswith(".json") else os.path.join(folder_or_file, name)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path!r} does not exist; expected a diffusers model folder (unet/, vae/ or "
                            "text_encoder/) with a config.json beside the weights.")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _check(raw: dict, source: str, allowed: dict[str, Any]) -> None:
  """Raises if any option of `allowed` (name -> tuple of accepted values) holds another value."""
  bad = [f"{k}={raw[k]!r} (supported: {', '.join(map(repr, ok))})" for k, ok in allowed.items()
         if k in raw and _norm(raw[k]) not in [_norm(v) for v in ok]]
  if bad:
    raise UnsupportedConfigError(f"{source}: unsupported option(s): " + "; ".join(bad)
                                 + ". These models implement the Stable Diffusion 1.x/2.x architectures only.")


def _norm(v: Any) -> Any:
  return tuple(_norm(x) for x in v) if isinstance(v, (list, tuple)) else v


def _per_block(value: Any, n: int, name: str, source: str) -> tuple[int, ...]:
  if isinstance(value, int):
    return (value,) * n
  value = tuple(value)
  if len(value) != n or not all(isinstance(v, int) for v in value):
    raise UnsupportedConfigError(f"{source}: {name}={list(value)} must be an int or one int per block ({n}).")
  return value


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """diffusers UNet2DConditionModel options of SD 1.x/2.x. `num_heads` is per down block (diffusers reads the
  historical `attention_head_dim` as the number of heads)."""
  block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
  down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
  up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
  num_heads: tuple[int, ...] = (8, 8, 8, 8)
  layers_per_block: int = 2
  in_channels: int = 4
  out_channels: int = 4
  cross_attention_dim: int = 768
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  flip_sin_to_cos: bool = True
  freq_shift: int = 0
  downsample_padding: int = 1
  center_input_sample: bool = False
  use_linear_projection: bool = False  # only the checkpoint layout of proj_in/proj_out (1x1 conv or linear)
  upcast_attention: bool = False  # attention logits/softmax are always fp32 here (see models/attention.py)
  sample_size: Optional[int] = 64
  # "text": pooled text embedding added to the timestep embedding (see embeddings.TextTimeEmbedding).
  addition_embed_type: Optional[str] = None
  addition_embed_type_num_heads: int = 64
  # "default": the time embedding is added to the resnet features; "scale_shift": it scales and shifts them
  # after the second GroupNorm (models/resnet.py).
  resnet_time_scale_shift: str = "default"
  # Keeps the written config.json faithful: SD 1.x stores an int attention_head_dim, SD 2.x a list.
  heads_as_int: bool = True

  def __post_init__(self):
    n = len(self.block_out_channels)
    if len(self.down_block_types) != n or len(self.up_block_types) != n or len(self.num_heads) != n:
      raise UnsupportedConfigError(
          f"UNet config: block_out_channels ({n}), down_block_types ({len(self.down_block_types)}), "
          f"up_block_types ({len(self.up_block_types)}) and the heads ({len(self.num_heads)}) must have one "
          "entry per block.")
    for i, (c, h) in enumerate(zip(self.block_out_channels, self.num_heads)):
      if c % h:
        raise UnsupportedConfigError(f"UNet config: block {i} has {c} channels, not divisible by {h} heads.")
    if self.addition_embed_type not in (None, "text"):
      raise UnsupportedConfigError(f"UNet config: addition_embed_type={self.addition_embed_type!r}; supported: "
                                   "None or 'text'.")
    if self.resnet_time_scale_shift not in ("default", "scale_shift"):
      raise UnsupportedConfigError(f"UNet config: resnet_time_scale_shift={self.resnet_time_scale_shift!r}; "
                                   "supported: 'default' or 'scale_shift'.")
    if self.addition_embed_type and self.cross_attention_dim % self.addition_embed_type_num_heads:
      raise UnsupportedConfigError(
          f"UNet config: cross_attention_dim {self.cross_attention_dim} is not divisible by "
          f"addition_embed_type_num_heads={self.addition_embed_type_num_heads}.")

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)

  @property
  def scale_shift(self) -> bool:
    return self.resnet_time_scale_shift == "scale_shift"

  @classmethod
  def from_diffusers(cls, raw: dict, source: str = "unet/config.json") -> "UNetConfig":
    if raw.get("_class_name", "UNet2DConditionModel") != "UNet2DConditionModel":
      raise UnsupportedConfigError(f"{source}: _class_name={raw['_class_name']!r}; only UNet2DConditionModel "
                                   "is supported.")
    _check(raw, source, {
        "mid_block_type": ("UNetMidBlock2DCrossAttn",), "act_fn": ("silu",), "dropout": (0.0,),
        "only_cross_attention": (False,), "dual_cross_attention": (False,), "class_embed_type": (None,),
        "addition_embed_type": (None, "text"), "encoder_hid_dim": (None,), "encoder_hid_dim_type": (None,),
        "num_class_embeds": (None,), "time_cond_proj_dim": (None,),
        "resnet_time_scale_shift": ("default", "scale_shift"),
        "resnet_skip_time_act": (False,), "resnet_out_scale_factor": (1.0,), "mid_block_scale_factor": (1.0,),
        "time_embedding_type": ("positional",), "time_embedding_dim": (None,), "time_embedding_act_fn": (None,),
        "timestep_post_act": (None,), "conv_in_kernel": (3,), "conv_out_kernel": (3,),
        "attention_type": ("default",), "class_embeddings_concat": (False,), "cross_attention_norm": (None,),
        "num_attention_heads": (None,), "transformer_layers_per_block": (1,),
        "reverse_transformer_layers_per_block": (None,), "projection_class_embeddings_input_dim": (None,),
        "mid_block_only_cross_attention": (None, False), "addition_time_embed_dim": (None,),
        "downsample_padding": (0, 1)})
    down = tuple(raw.get("down_block_types", cls.down_block_types))
    up = tuple(raw.get("up_block_types", cls.up_block_types))
    for t in down:
      if t not in ("CrossAttnDownBlock2D", "DownBlock2D"):
        raise UnsupportedConfigError(f"{source}: down block type {t!r} is not supported "
                                     "(CrossAttnDownBlock2D, DownBlock2D).")
    for t in up:
      if t not in ("CrossAttnUpBlock2D", "UpBlock2D"):
        raise UnsupportedConfigError(f"{source}: up block type {t!r} is not supported "
                                     "(CrossAttnUpBlock2D, UpBlock2D).")
    channels = tuple(raw.get("block_out_channels", cls.block_out_channels))
    lpb = raw.get("layers_per_block", 2)
    if not isinstance(lpb, int):
      raise UnsupportedConfigError(f"{source}: layers_per_block={lpb!r} must be a single int.")
    cross = raw.get("cross_attention_dim", 1280)
    if not isinstance(cross, int):
      raise UnsupportedConfigError(f"{source}: cross_attention_dim={cross!r} must be a single int.")
    heads = raw.get("attention_head_dim", 8)
    if raw.get("norm_num_groups", 32) is None:
      raise UnsupportedConfigError(f"{source}: norm_num_groups=None (no normalisation) is not supported.")
    return cls(
        block_out_channels=channels, down_block_types=down, up_block_types=up,
        num_heads=_per_block(heads, len(channels), "attention_head_dim", source), layers_per_block=lpb,
        in_channels=raw.get("in_channels", 4), out_channels=raw.get("out_channels", 4), cross_attention_dim=cross,
        norm_num_groups=raw.get("norm_num_groups", 32), norm_eps=raw.get("norm_eps", 1e-5),
        flip_sin_to_cos=raw.get("flip_sin_to_cos", True), freq_shift=raw.get("freq_shift", 0),
        downsample_padding=raw.get("downsample_padding", 1),
        center_input_sample=raw.get("center_input_sample", False),
        use_linear_projection=raw.get("use_linear_projection", False),
        upcast_attention=raw.get("upcast_attention", False) or False, sample_size=raw.get("sample_size"),
        heads_as_int=isinstance(heads, int), addition_embed_type=raw.get("addition_embed_type"),
        addition_embed_type_num_heads=raw.get("addition_embed_type_num_heads", 64),
        resnet_time_scale_shift=raw.get("resnet_time_scale_shift", "default"))

  def to_diffusers(self) -> dict:
    heads = self.num_heads[0] if self.heads_as_int and len(set(self.num_heads)) == 1 else list(self.num_heads)
    return {
        "_class_name": "UNet2DConditionModel", "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu", "attention_head_dim": heads, "block_out_channels": list(self.block_out_channels),
        "center_input_sample": self.center_input_sample, "cross_attention_dim": self.cross_attention_dim,
        "down_block_types": list(self.down_block_types), "downsample_padding": self.downsample_padding,
        "flip_sin_to_cos": self.flip_sin_to_cos, "freq_shift": self.freq_shift, "in_channels": self.in_channels,
        "layers_per_block": self.layers_per_block, "mid_block_scale_factor": 1, "mid_block_type":
        "UNetMidBlock2DCrossAttn", "norm_eps": self.norm_eps, "norm_num_groups": self.norm_num_groups,
        "out_channels": self.out_channels, "sample_size": self.sample_size,
        "up_block_types": list(self.up_block_types), "use_linear_projection": self.use_linear_projection,
        "upcast_attention": self.upcast_attention, "addition_embed_type": self.addition_embed_type,
        "addition_embed_type_num_heads": self.addition_embed_type_num_heads,
        "resnet_time_scale_shift": self.resnet_time_scale_shift}


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """diffusers AutoencoderKL options of SD 1.x/2.x."""
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  in_channels: int = 3
  out_channels: int = 3
  latent_channels: int = 4
  norm_num_groups: int = 32
  sample_size: Optional[int] = 512
  scaling_factor: float = 0.18215
  shift_factor: Optional[float] = None
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True
  force_upcast: bool = True

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)

  @classmethod
  def from_diffusers(cls, raw: dict, source: str = "vae/config.json") -> "VAEConfig":
    if raw.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
      raise UnsupportedConfigError(f"{source}: _class_name={raw['_class_name']!r}; only AutoencoderKL is "
                                   "supported.")
    _check(raw, source, {"act_fn": ("silu",), "latents_mean": (None,), "latents_std": (None,)})
    channels = tuple(raw.get("block_out_channels", (64,)))
    for key, want in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
      types = raw.get(key, [want])
      if list(types) != [want] * len(channels):
        raise UnsupportedConfigError(f"{source}: {key}={types} is not supported: need {len(channels)} x {want!r}.")
    return cls(block_out_channels=channels, layers_per_block=raw.get("layers_per_block", 1),
               in_channels=raw.get("in_channels", 3), out_channels=raw.get("out_channels", 3),
               latent_channels=raw.get("latent_channels", 4), norm_num_groups=raw.get("norm_num_groups", 32),
               sample_size=raw.get("sample_size", 32), scaling_factor=raw.get("scaling_factor", 0.18215),
               shift_factor=raw.get("shift_factor"), use_quant_conv=raw.get("use_quant_conv", True),
               use_post_quant_conv=raw.get("use_post_quant_conv", True),
               mid_block_add_attention=raw.get("mid_block_add_attention", True),
               force_upcast=raw.get("force_upcast", True))

  def to_diffusers(self) -> dict:
    n = len(self.block_out_channels)
    return {
        "_class_name": "AutoencoderKL", "_diffusers_version": DIFFUSERS_VERSION, "act_fn": "silu",
        "block_out_channels": list(self.block_out_channels), "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n, "in_channels": self.in_channels,
        "out_channels": self.out_channels, "latent_channels": self.latent_channels,
        "layers_per_block": self.layers_per_block, "norm_num_groups": self.norm_num_groups,
        "sample_size": self.sample_size, "scaling_factor": self.scaling_factor, "shift_factor": self.shift_factor,
        "use_quant_conv": self.use_quant_conv, "use_post_quant_conv": self.use_post_quant_conv,
        "mid_block_add_attention": self.mid_block_add_attention, "force_upcast": self.force_upcast}


TEXT_ACTIVATIONS = ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh")


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """transformers CLIPTextConfig options (SD 1.x: CLIP ViT-L/14 text tower; SD 2.x: OpenCLIP ViT-H, 23 layers)."""
  vocab_size: int = 49408
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  max_position_embeddings: int = 77
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  bos_token_id: int = 49406
  eos_token_id: int = 49407
  pad_token_id: Optional[int] = 1
  projection_dim: int = 768

  def __post_init__(self):
    if self.hidden_act not in TEXT_ACTIVATIONS:
      raise UnsupportedConfigError(f"text encoder config: hidden_act={self.hidden_act!r} is not supported "
                                   f"({', '.join(TEXT_ACTIVATIONS)}).")
    if self.hidden_size % self.num_attention_heads:
      raise UnsupportedConfigError(f"text encoder config: hidden_size {self.hidden_size} is not divisible by "
                                   f"num_attention_heads {self.num_attention_heads}.")

  @classmethod
  def from_transformers(cls, raw: dict, source: str = "text_encoder/config.json") -> "TextConfig":
    arch = raw.get("architectures") or ["CLIPTextModel"]
    if raw.get("model_type", "clip_text_model") != "clip_text_model" or arch[0] != "CLIPTextModel":
      raise UnsupportedConfigError(
          f"{source}: model_type={raw.get('model_type')!r}, architectures={arch}; only transformers' "
          "CLIPTextModel (model_type 'clip_text_model') is supported, as in SD 1.x/2.x folders.")
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in raw.items() if k in fields}
    if isinstance(kwargs.get("eos_token_id"), list):
      raise UnsupportedConfigError(f"{source}: a list of eos_token_id values is not supported.")
    return cls(**kwargs)

  def to_transformers(self) -> dict:
    out = dataclasses.asdict(self)
    out.update(architectures=["CLIPTextModel"], model_type="clip_text_model", attention_dropout=0.0,
               initializer_factor=1.0, initializer_range=0.02, dtype="float32")
    return out


def check_text_conditioning(unet: UNetConfig, text: TextConfig, source: str) -> None:
  """Raises if the text encoder's embeddings do not fit the UNet's cross-attention (a folder or checkpoint whose
  parts come from different models)."""
  if text.hidden_size != unet.cross_attention_dim:
    raise UnsupportedConfigError(
        f"{source}: the text encoder's hidden_size is {text.hidden_size} but the UNet's cross_attention_dim is "
        f"{unet.cross_attention_dim} (unet/config.json); they must be equal: the UNet attends to the text "
        "encoder's last hidden state. The text_encoder/ and unet/ come from different models.")


def unet_config(folder: str) -> UNetConfig:
  """UNetConfig of a diffusers `unet/` folder (or its config.json)."""
  return UNetConfig.from_diffusers(read_json(folder), source=os.path.join(folder, "config.json"))


def vae_config(folder: str) -> VAEConfig:
  """VAEConfig of a diffusers `vae/` folder (or its config.json)."""
  return VAEConfig.from_diffusers(read_json(folder), source=os.path.join(folder, "config.json"))


def text_config(folder: str) -> TextConfig:
  """TextConfig of a transformers `text_encoder/` folder (or its config.json)."""
  return TextConfig.from_transformers(read_json(folder), source=os.path.join(folder, "config.json"))


# ----------------------------------------------------------------------------------------------------------
# Named architectures of the released Stable Diffusion checkpoints, for single files that come without a
# diffusers config folder (the values of the Hub folders runwayml/stable-diffusion-v1-5,
# stabilityai/stable-diffusion-2-base and stabilityai/stable-diffusion-2-1).

@dataclasses.dataclass(frozen=True)
class Preset:
  """The architecture, scheduler and tokenizer padding of one released SD family."""
  name: str
  unet: UNetConfig
  vae: VAEConfig
  text: TextConfig
  scheduler: dict
  pad_token: str
  description: str


_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "num_train_timesteps": 1000, "set_alpha_to_one": False, "steps_offset": 1, "clip_sample": False,
             "skip_prk_steps": True, "trained_betas": None}
_SD2_UNET = dict(num_heads=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True,
                 heads_as_int=False)
_SD2_TEXT = TextConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                       hidden_act="gelu", projection_dim=512, bos_token_id=0, eos_token_id=2, pad_token_id=1)

PRESETS: dict[str, Preset] = {
    "sd1": Preset(
        "sd1", UNetConfig(), VAEConfig(),
        TextConfig(bos_token_id=0, eos_token_id=2, pad_token_id=1),
        dict(_SCHEDULE, _class_name="PNDMScheduler", prediction_type="epsilon"), "<|endoftext|>",
        "SD 1.x (1.4, 1.5): CLIP ViT-L/14 text encoder, 512 px, epsilon prediction"),
    "sd2-base": Preset(
        "sd2-base", UNetConfig(**_SD2_UNET), VAEConfig(), _SD2_TEXT,
        dict(_SCHEDULE, _class_name="PNDMScheduler", prediction_type="epsilon"), "!",
        "SD 2.x base (2.0-base, 2.1-base): OpenCLIP ViT-H text encoder, 512 px, epsilon prediction"),
    "sd2-v": Preset(
        "sd2-v", UNetConfig(**_SD2_UNET, upcast_attention=True, sample_size=96), VAEConfig(sample_size=768),
        _SD2_TEXT, dict(_SCHEDULE, _class_name="DDIMScheduler", prediction_type="v_prediction"), "!",
        "SD 2.x 768-v (2.0, 2.1): OpenCLIP ViT-H text encoder, 768 px, v-prediction"),
}


def preset(name: str) -> Preset:
  """The Preset called `name` (sd1, sd2-base, sd2-v)."""
  if name not in PRESETS:
    raise ValueError(f"unknown preset {name!r}; choose one of: "
                     + "; ".join(f"{p.name} ({p.description})" for p in PRESETS.values())
                     + " (or give a diffusers config folder).")
  return PRESETS[name]
