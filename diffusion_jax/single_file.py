"""Stable Diffusion single-file checkpoints (the original CompVis / Stability layout) as our models.

    pipe = diffusion_jax.from_single_file("v1-5-pruned-emaonly.safetensors", config="sd1")
    pipe = diffusion_jax.from_single_file("v2-1_768-ema-pruned.ckpt", config="path/to/diffusers-sd2-folder")
    python -m diffusion_jax.convert --from-single-file model.safetensors --config sd1 --out sd-folder

One file holds the three models under the names of the `ldm` code base:
- `model.diffusion_model.*`: the UNet (input_blocks / middle_block / output_blocks, resnets with in_layers /
  emb_layers / out_layers, the SpatialTransformers under diffusers' own names);
- `first_stage_model.*`: the VAE (encoder.down.i.block.j, mid.block_1 / attn_1 with 1x1-conv q/k/v,
  decoder.up.i numbered from the lowest resolution, the reverse of diffusers);
- `cond_stage_model.*`: the text encoder, SD 1.x: transformers' CLIPTextModel under `cond_stage_model.transformer.`;
  SD 2.x: OpenCLIP under `cond_stage_model.model.` (fused in_proj q/k/v; the last residual block unused: SD 2.x
  conditions on the penultimate layer, so a 23-layer text encoder reads a 24-block checkpoint).
Full training checkpoints also hold the EMA UNet (`model_ema.<name without dots>`); `use_ema` chooses it (the
default, as diffusers' from_single_file, is the raw `model.diffusion_model.*` weights; EMA-only files already
store the EMA weights there). The DDPM schedule buffers (betas, alphas_cumprod, ...) are dropped: the scheduler
comes from the config. Every other tensor must map onto the models: t2i_common.weights.convert_strict lists
missing, unexpected and mis-shaped ones under their names in the file.

The architecture, scheduler and tokenizer come from `config`: a diffusers pipeline folder (its unet/, vae/,
text_encoder/ config.json, scheduler/ and tokenizer/; weights there are not read) or a preset name (sd1,
sd2-base, sd2-v: diffusion_jax.model_configs.PRESETS). A preset has no tokenizer files: pass `tokenizer=` (a
tokenizer folder of either layout), or install open_clip_torch, whose CLIP BPE file is the SD 1.x/2.x vocabulary.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Callable, Optional, Sequence, Union

import jax.numpy as jnp
import numpy as np

from diffusion_jax import convert
from diffusion_jax.model_configs import (Preset, TextConfig, UNetConfig, VAEConfig, check_text_conditioning, preset,
                                         text_config, unet_config, vae_config)
from diffusion_jax.models.clip_text import CLIPTextTransformer
from diffusion_jax.models.unet import UNet2DConditionModel
from diffusion_jax.models.vae import AutoencoderKL
from diffusion_jax.schedulers import Scheduler, load_scheduler
from diffusion_jax.tokenizer import CLIPTokenizer
from t2i_common.weights import WeightMismatchError, convert_strict, read_state_dict

log = logging.getLogger(__name__)

UNET_PREFIX, VAE_PREFIX = "model.diffusion_model.", "first_stage_model."
CLIP_PREFIX, OPENCLIP_PREFIX, EMA_PREFIX = "cond_stage_model.transformer.", "cond_stage_model.model.", "model_ema."
# LatentDiffusion's registered buffers: the training noise schedule (the scheduler config has it) and logvar.
SCHEDULE_BUFFERS = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar", "lvlb_weights", "model_ema.decay", "model_ema.num_updates"})
# Known tensors that are not part of the inference models: the VAE's training loss (LPIPS, discriminator), the
# CLIP position-id buffer, OpenCLIP's contrastive head and causal-mask buffer.
_DROPPED = (r"^first_stage_model\.loss\.", r"^cond_stage_model\.transformer\.(text_model\.)?embeddings\.position_ids$",
            r"^cond_stage_model\.model\.(text_projection|logit_scale|attn_mask)$")
_RESNET = (("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
           ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut."))
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_OPENCLIP_LAYER = (("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("attn.out_proj.", "self_attn.out_proj."),
                   ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2."))


class SingleFileError(ValueError):
  """A single-file checkpoint that does not hold a Stable Diffusion model in the original layout."""


# ----------------------------------------------------------------------------------------------------------
# Names: original layout -> diffusers/transformers names (None: not a name of that model).

def _replace_prefix(rest: str, table) -> str:
  for old, new in table:
    if rest.startswith(old):
      return new + rest[len(old):]
  return rest


def unet_name(name: str, cfg: UNetConfig) -> Optional[str]:
  """diffusers UNet2DConditionModel name of an `ldm` UNet name (without model.diffusion_model.)."""
  fixed = {"time_embed.0.": "time_embedding.linear_1.", "time_embed.2.": "time_embedding.linear_2.",
           "input_blocks.0.0.": "conv_in.", "out.0.": "conv_norm_out.", "out.2.": "conv_out."}
  for old, new in fixed.items():
    if name.startswith(old):
      return new + name[len(old):]
  per = cfg.layers_per_block + 1  # resnets per down block, plus its downsampler (or one more up resnet)
  m = re.fullmatch(r"(input_blocks|middle_block|output_blocks)\.(\d+)\.(?:(\d+)\.)?(.+)", name)
  if not m:
    return None
  kind, i, j, rest = m.group(1), int(m.group(2)), m.group(3), m.group(4)
  j = int(j) if j is not None else None
  n = len(cfg.block_out_channels)
  if kind == "middle_block":  # middle_block.0 / .2 resnets, .1 the transformer (no sub-index)
    if j is not None:
      rest = f"{j}.{rest}"
    return {0: f"mid_block.resnets.0.{_replace_prefix(rest, _RESNET)}", 1: f"mid_block.attentions.0.{rest}",
            2: f"mid_block.resnets.1.{_replace_prefix(rest, _RESNET)}"}.get(i)
  if j is None:
    return None
  if kind == "input_blocks":
    block, layer = divmod(i - 1, per)
    if i < 1 or block >= n:
      return None
    if layer < cfg.layers_per_block:
      if j == 0:
        return f"down_blocks.{block}.resnets.{layer}.{_replace_prefix(rest, _RESNET)}"
      if j == 1 and cfg.down_block_types[block] == "CrossAttnDownBlock2D":
        return f"down_blocks.{block}.attentions.{layer}.{rest}"
      return None
    if j == 0 and rest.startswith("op.") and block < n - 1:
      return f"down_blocks.{block}.downsamplers.0.conv.{rest[3:]}"
    return None
  block, layer = divmod(i, per)
  if block >= n:
    return None
  has_attn = cfg.up_block_types[block] == "CrossAttnUpBlock2D"
  if j == 0:
    return f"up_blocks.{block}.resnets.{layer}.{_replace_prefix(rest, _RESNET)}"
  if j == 1 and has_attn:
    return f"up_blocks.{block}.attentions.{layer}.{rest}"
  if j == (2 if has_attn else 1) and layer == cfg.layers_per_block and block < n - 1 and rest.startswith("conv."):
    return f"up_blocks.{block}.upsamplers.0.{rest}"
  return None


def vae_name(name: str, cfg: VAEConfig) -> Optional[str]:
  """diffusers AutoencoderKL name of an `ldm` VAE name (without first_stage_model.)."""
  n = len(cfg.block_out_channels)
  for side in ("encoder", "decoder"):
    if not name.startswith(side + "."):
      continue
    rest = name[len(side) + 1:]
    if rest.startswith("norm_out."):
      return f"{side}.conv_norm_out.{rest[len('norm_out.'):]}"
    if rest.startswith(("conv_in.", "conv_out.")):
      return name
    m = re.fullmatch(r"mid\.block_([12])\.(.+)", rest)
    if m:
      return f"{side}.mid_block.resnets.{int(m.group(1)) - 1}.{m.group(2).replace('nin_shortcut.', 'conv_shortcut.')}"
    m = re.fullmatch(r"mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)", rest)
    if m:
      return f"{side}.mid_block.attentions.0.{_VAE_ATTN[m.group(1)]}.{m.group(2)}"
    m = re.fullmatch(r"(down|up)\.(\d+)\.(block\.(\d+)|downsample|upsample)\.(.+)", rest)
    if not m or (m.group(1) == "down") != (side == "encoder") or int(m.group(2)) >= n:
      return None
    # The decoder's up.i counts from the lowest resolution; diffusers' up_blocks from the highest.
    block = int(m.group(2)) if side == "encoder" else n - 1 - int(m.group(2))
    blocks = "down_blocks" if side == "encoder" else "up_blocks"
    if m.group(4) is not None:
      return f"{side}.{blocks}.{block}.resnets.{m.group(4)}.{m.group(5).replace('nin_shortcut.', 'conv_shortcut.')}"
    if m.group(3) == ("downsample" if side == "encoder" else "upsample") and m.group(5).startswith("conv."):
      return f"{side}.{blocks}.{block}.{m.group(3)}rs.0.{m.group(5)}"
    return None
  if name.startswith(("quant_conv.", "post_quant_conv.")):
    return name
  return None


def openclip_name(name: str, cfg: TextConfig) -> Optional[str]:
  """transformers CLIPTextModel name of an OpenCLIP text-tower name (without cond_stage_model.model.); the
  split q/k/v of a fused in_proj arrive as `...attn.in_proj_weight:q` etc."""
  fixed = {"token_embedding.weight": "embeddings.token_embedding.weight",
           "positional_embedding": "embeddings.position_embedding.weight",
           "ln_final.weight": "final_layer_norm.weight", "ln_final.bias": "final_layer_norm.bias"}
  if name in fixed:
    return fixed[name]
  m = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)", name)
  if not m:
    return None
  layer, rest = int(m.group(1)), m.group(2)
  m = re.fullmatch(r"attn\.in_proj_(weight|bias):([qkv])", rest)
  if m:
    return f"encoder.layers.{layer}.self_attn.{m.group(2)}_proj.{m.group(1)}"
  renamed = _replace_prefix(rest, _OPENCLIP_LAYER)
  return f"encoder.layers.{layer}.{renamed}" if renamed != rest else None


# ----------------------------------------------------------------------------------------------------------
# Splitting a checkpoint into the three models.

def _split_qkv(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """OpenCLIP's fused in_proj_weight [3D, D] / in_proj_bias [3D] -> `name:q`, `name:k`, `name:v`."""
  out = {}
  for name, value in state.items():
    if re.search(r"\.attn\.in_proj_(weight|bias)$", name) and value.shape[0] % 3 == 0:
      for part, chunk in zip("qkv", np.split(value, 3, axis=0)):
        out[f"{name}:{part}"] = chunk
    else:
      out[name] = value
  return out


def ema_name(unet_key: str) -> str:
  """The EMA copy's name of a `model.diffusion_model.*` tensor: ldm's LitEma drops the dots."""
  return EMA_PREFIX + "".join(unet_key.split(".")[1:])


def split_checkpoint(state: dict[str, np.ndarray], source: str, *, use_ema: bool = False,
                     text_layers: Optional[int] = None) -> dict[str, Any]:
  """{"unet": ..., "vae": ..., "text_clip" or "text_openclip": ..., "unknown": ...} with prefixes removed, and
  "missing_ema": [the names of the EMA copies absent from the file] (with use_ema).

  use_ema: take the UNet from model_ema.* (raises if the file has none). text_layers: the text encoder's depth;
  an OpenCLIP tower with exactly one more residual block loses its last one (SD 2.x's penultimate layer).
  """
  ignore = [re.compile(p) for p in _DROPPED]
  parts: dict[str, Any] = {"unet": {}, "vae": {}, "text_clip": {}, "text_openclip": {}, "unknown": {},
                           "missing_ema": []}
  ema = {k: v for k, v in state.items() if k.startswith(EMA_PREFIX) and k not in SCHEDULE_BUFFERS}
  for name, value in state.items():
    if name in SCHEDULE_BUFFERS or name in ema or any(r.search(name) for r in ignore):
      continue
    for prefix, part in ((UNET_PREFIX, "unet"), (VAE_PREFIX, "vae"), (CLIP_PREFIX, "text_clip"),
                         (OPENCLIP_PREFIX, "text_openclip")):
      if name.startswith(prefix):
        parts[part][name[len(prefix):]] = value
        break
    else:
      parts["unknown"][name] = value
  if use_ema:
    if not ema:
      raise SingleFileError(f"{source} has no EMA weights (model_ema.*): it holds one set of UNet weights (an "
                            "EMA-only file stores the EMA weights as model.diffusion_model.*); load it with "
                            "use_ema=False.")
    unet = {}
    for name in list(parts["unet"]):
      key = ema_name(UNET_PREFIX + name)
      if key in ema:
        unet[name] = ema.pop(key)
      else:
        parts["missing_ema"].append(f"{key} (the EMA copy of {UNET_PREFIX}{name})")
    parts["unet"] = unet
    parts["unknown"].update(ema)  # EMA tensors with no model.diffusion_model.* counterpart
  elif ema:
    log.info("%s also holds EMA weights (%d model_ema.* tensors); using model.diffusion_model.* as diffusers "
             "does by default (use_ema=True for the EMA weights, usually better for sampling).", source, len(ema))
  if parts["text_openclip"]:
    parts["text_openclip"] = _split_qkv(parts["text_openclip"])
    if text_layers is not None:
      last = f"transformer.resblocks.{text_layers}."
      if not any(k.startswith(f"transformer.resblocks.{text_layers + 1}.") for k in parts["text_openclip"]):
        parts["text_openclip"] = {k: v for k, v in parts["text_openclip"].items() if not k.startswith(last)}
  return parts


def _convert(part: dict[str, np.ndarray], module: Any, to_name: Callable[[str], Optional[str]], prefix: str,
             strip_prefix: str = "") -> tuple[dict, list[str], list[str], list[str]]:
  """convert_strict on one model's tensors, errors named as in the file: (variables, missing, unexpected,
  misshaped)."""
  template = convert.abstract_variables(module)["params"]
  inner = convert.make_rename(template, strip_prefix)

  def rename(name, tensor):
    mapped = to_name(name)
    return None if mapped is None else inner(mapped, tensor)

  try:
    params = convert_strict({prefix + k: v for k, v in part.items()}, template,
                            lambda n, t: rename(n[len(prefix):], t), source=prefix + "*")
  except WeightMismatchError as e:
    return {}, [f"{prefix}* -> {m}" for m in e.missing], e.unexpected, e.misshaped
  return {"params": params}, [], [], []


def convert_checkpoint(state: dict[str, np.ndarray], unet: UNet2DConditionModel, vae: AutoencoderKL,
                       text_encoder: CLIPTextTransformer, source: str = "the checkpoint", *,
                       use_ema: bool = False) -> dict[str, dict]:
  """{"unet", "vae", "text_encoder"} variables of a single-file state dict, or WeightMismatchError listing every
  missing, unexpected and mis-shaped tensor of the three models."""
  if any(k.startswith("conditioner.embedders.") for k in state):
    raise SingleFileError(f"{source} is an SDXL-style checkpoint (conditioner.embedders.*); only Stable Diffusion "
                          "1.x/2.x single files are supported.")
  parts = split_checkpoint(state, source, use_ema=use_ema, text_layers=text_encoder.config.num_hidden_layers)
  if not parts["unet"] and not parts["vae"]:
    raise SingleFileError(
        f"{source} is not a Stable Diffusion checkpoint in the original layout: no {UNET_PREFIX}* or "
        f"{VAE_PREFIX}* tensors (its first names: {sorted(state)[:5]}). A diffusers folder loads with "
        "diffusion_jax.from_pretrained.")
  if parts["text_clip"] and parts["text_openclip"]:
    raise SingleFileError(f"{source} holds both {CLIP_PREFIX}* and {OPENCLIP_PREFIX}* text encoders.")
  results = {"vae": _convert(parts["vae"], vae, lambda n: vae_name(n, vae.config), VAE_PREFIX)}
  if parts["missing_ema"]:  # an incomplete EMA copy: list its gaps rather than every UNet parameter
    results["unet"] = ({}, sorted(parts["missing_ema"]), [], [])
  else:
    results["unet"] = _convert(parts["unet"], unet, lambda n: unet_name(n, unet.config), UNET_PREFIX)
  if parts["text_openclip"]:
    results["text_encoder"] = _convert(parts["text_openclip"], text_encoder,
                                       lambda n: openclip_name(n, text_encoder.config), OPENCLIP_PREFIX)
  else:  # transformers' own names, with or without text_model.
    results["text_encoder"] = _convert(parts["text_clip"], text_encoder, lambda n: n, CLIP_PREFIX,
                                       strip_prefix="text_model.")
  missing = [m for r in results.values() for m in r[1]]
  unexpected = [u for r in results.values() for u in r[2]] + sorted(parts["unknown"])
  misshaped = [m for r in results.values() for m in r[3]]
  if missing or unexpected or misshaped:
    raise WeightMismatchError(source, missing, unexpected, misshaped)
  return {k: results[k][0] for k in ("unet", "vae", "text_encoder")}


# ----------------------------------------------------------------------------------------------------------
# The architecture: a diffusers folder or a preset.

def _architecture(config: Union[str, Preset]) -> tuple[UNetConfig, VAEConfig, TextConfig, Any, Optional[str], str]:
  """(unet, vae, text configs, scheduler config or folder, tokenizer folder or None, pad token)."""
  if isinstance(config, Preset):
    return config.unet, config.vae, config.text, config.scheduler, None, config.pad_token
  if os.path.isdir(config):
    missing = [c for c in ("unet", "vae", "text_encoder", "scheduler", "tokenizer")
               if not os.path.isdir(os.path.join(config, c))]
    if missing:
      raise FileNotFoundError(f"config folder {config!r} lacks {', '.join(m + '/' for m in missing)}: expected a "
                              "diffusers Stable Diffusion folder (its config.json files are read, not its weights).")
    return (unet_config(os.path.join(config, "unet")), vae_config(os.path.join(config, "vae")),
            text_config(os.path.join(config, "text_encoder")), config, os.path.join(config, "tokenizer"), "")
  if os.path.sep in config or config.startswith("."):
    raise FileNotFoundError(f"config folder {config!r} does not exist.")
  return _architecture(preset(config))


def open_clip_tokenizer(pad_token: str) -> CLIPTokenizer:
  """CLIP's tokenizer (SD 1.x and 2.x share it) from the BPE file open_clip_torch ships, if installed."""
  import importlib.util
  spec = importlib.util.find_spec("open_clip")  # locates the package without importing it (it needs torch)
  path = os.path.join(os.path.dirname(spec.origin), "bpe_simple_vocab_16e6.txt.gz") if spec and spec.origin else ""
  if not os.path.isfile(path):
    raise FileNotFoundError(
        "a preset has no tokenizer files: pass tokenizer= (the tokenizer/ folder of any SD 1.x/2.x diffusers "
        "folder, vocab.json + merges.txt or tokenizer.json), or install open_clip_torch, whose CLIP vocabulary "
        "is the same.")
  return CLIPTokenizer.from_bpe_file(path, pad_token=pad_token)


def _load_tokenizer(tokenizer: Union[None, str, CLIPTokenizer], folder: Optional[str], pad: str) -> CLIPTokenizer:
  if isinstance(tokenizer, CLIPTokenizer):
    return tokenizer
  if tokenizer is not None:
    return CLIPTokenizer.from_folder(tokenizer, **({"pad_token": pad} if pad else {}))
  if folder is not None:
    return CLIPTokenizer.from_folder(folder)
  return open_clip_tokenizer(pad)


def _check_family(state: dict, config: Union[str, Preset], source: str) -> None:
  """A clear message, instead of a list of every tensor, when a preset of the other SD generation is named."""
  name = config.name if isinstance(config, Preset) else config
  if name not in ("sd1", "sd2-base", "sd2-v"):
    return
  if name == "sd1" and any(k.startswith(OPENCLIP_PREFIX) for k in state):
    raise SingleFileError(f"{source} has an OpenCLIP text encoder ({OPENCLIP_PREFIX}*): an SD 2.x checkpoint; use "
                          "config='sd2-base' (512 px, epsilon) or config='sd2-v' (768 px, v-prediction).")
  if name != "sd1" and any(k.startswith(CLIP_PREFIX) for k in state):
    raise SingleFileError(f"{source} has a CLIP text encoder ({CLIP_PREFIX}*): an SD 1.x checkpoint; use "
                          "config='sd1'.")


def from_single_file(path: str, config: Union[str, Preset], dtype: Any = jnp.float32,
                     scheduler: Union[None, str, Scheduler] = None, *,
                     tokenizer: Union[None, str, CLIPTokenizer] = None,
                     use_ema: bool = False, param_dtype: Any = None, devices: Optional[Sequence[Any]] = None):
  """Reads a single-file SD 1.x/2.x checkpoint (.safetensors, or .ckpt / .pt / .bin read without running
  pickled code) into a Pipeline (see the module docstring).

  config: a diffusers pipeline folder or a preset name (sd1, sd2-base, sd2-v). tokenizer: a tokenizer folder
  (default: the config folder's; for a preset, open_clip_torch's CLIP vocabulary with the preset's padding).
  use_ema: the EMA UNet weights of a full training checkpoint. dtype, param_dtype, scheduler, devices: as
  diffusion_jax.from_pretrained.
  """
  from diffusion_jax.pipeline import Pipeline, _default_model_index, resolve_dtype

  if not os.path.isfile(path):
    raise FileNotFoundError(f"checkpoint {path!r} does not exist.")
  unet_cfg, vae_cfg, text_cfg, sched_cfg, tok_folder, pad = _architecture(config)
  dtype = resolve_dtype(dtype)
  param_dtype = resolve_dtype(param_dtype) if param_dtype is not None else dtype
  vae_dtype, vae_param_dtype = dtype, param_dtype
  if jnp.dtype(dtype) == jnp.float16 and vae_cfg.force_upcast:
    vae_dtype = vae_param_dtype = jnp.float32  # SD's VAE overflows in float16; diffusers upcasts it too
  unet = UNet2DConditionModel(unet_cfg, dtype=dtype, param_dtype=param_dtype)
  vae = AutoencoderKL(vae_cfg, dtype=vae_dtype, param_dtype=vae_param_dtype)
  text_encoder = CLIPTextTransformer(text_cfg, dtype=dtype, param_dtype=param_dtype)
  check_text_conditioning(unet_cfg, text_cfg, f"config {config if isinstance(config, str) else config.name!r}")
  tok = _load_tokenizer(tokenizer, tok_folder, pad)
  if not isinstance(scheduler, Scheduler):
    scheduler = load_scheduler(sched_cfg, name=scheduler)
  log.info("reading %s", path)
  state = read_state_dict(path)
  _check_family(state, config, path)
  params = convert_checkpoint(state, unet, vae, text_encoder, path, use_ema=use_ema)
  return Pipeline(tokenizer=tok, text_encoder=text_encoder, unet=unet, vae=vae, scheduler=scheduler, params=params,
                  dtype=dtype, model_index=_default_model_index(), source=os.path.abspath(path), devices=devices)

