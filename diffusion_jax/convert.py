"""Load and save diffusers-format model folders (unet/, vae/, text_encoder/) as our Flax models.

    module, variables = load_unet("sd-folder/unet", jnp.bfloat16)   # compute dtype; parameters stay fp32
    eps = module.apply(variables, latents_nhwc, t, text_emb)
    save_unet("out/unet", module, variables)                        # config.json + safetensors, diffusers layout

`load_*` return (module, variables) where variables = {"params": tree of host numpy arrays} (place them on
devices with the shardings you need). Weights are read from `<stem>.safetensors`, `<stem>.bin`, their
`.<variant>` forms or sharded `*.index.json` files, and converted strictly: any missing, unexpected or
mis-shaped tensor raises t2i_common.weights.WeightMismatchError listing the names. `save_*` write the reverse
conversion, which diffusers/transformers `from_pretrained` and our `load_*` read back.

Names map mechanically: torch `down_blocks.1.attentions.0.proj_in.weight` is Flax
`down_blocks_1/attentions_0/proj_in/kernel`; conv weights are transposed OIHW -> HWIO, linear weights (in, out),
norm weights become `scale`, embeddings `embedding`. 1x1-conv projections (SD 1.x proj_in/proj_out, old VAE
attention) load into our Dense layers; old VAE attention names (query/key/value/proj_attn) and the
`text_model.` prefix of older CLIP checkpoints are accepted.

Single-file checkpoints (the original CompVis / Stability layout, diffusion_jax/single_file.py) become a diffusers
folder on the command line:

    python -m diffusion_jax.convert --from-single-file v1-5-pruned-emaonly.safetensors --config sd1 --out sd15
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from diffusion_jax.model_configs import (TextConfig, UNetConfig, VAEConfig, text_config, unet_config,
                                         vae_config)
from diffusion_jax.models.clip_text import CLIPTextTransformer
from diffusion_jax.models.unet import UNet2DConditionModel
from diffusion_jax.models.vae import AutoencoderKL
from t2i_common.parallel import run_once_compiler_options
from t2i_common.weights import conv_kernel, convert_strict, dense_kernel, read_state_dict

Path = tuple[str, ...]
DIFFUSERS_STEMS = ("diffusion_pytorch_model",)
TRANSFORMERS_STEMS = ("model", "pytorch_model")
# diffusers/transformers ModuleList names: their numeric children become a `_N` suffix in Flax names.
_LIST_NAMES = frozenset({"down_blocks", "up_blocks", "resnets", "attentions", "transformer_blocks",
                         "downsamplers", "upsamplers", "layers", "to_out", "net"})
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_TEXT_IGNORE = (r"(^|\.)position_ids$",)  # a non-persistent buffer that old checkpoints still contain


# ----------------------------------------------------------------------------------------------------------
# Finding and reading weight files.

def weight_files(folder: str, stems: tuple[str, ...], variant: Optional[str] = None) -> list[str]:
  """The weight file(s) of a model folder: safetensors preferred, then .bin; sharded index files resolved."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"model folder {folder!r} does not exist.")
  suffix = f".{variant}" if variant else ""
  for ext in (".safetensors", ".bin"):
    for stem in stems:
      single = os.path.join(folder, stem + suffix + ext)
      if os.path.isfile(single):
        return [single]
      index = single + ".index.json"
      if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
          shards = sorted(set(json.load(f)["weight_map"].values()))
        missing = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
        if missing:
          raise FileNotFoundError(f"{index} lists shard(s) that are absent: {missing}.")
        return [os.path.join(folder, s) for s in shards]
  wanted = ", ".join(f"{s}{suffix}{e}" for s in stems for e in (".safetensors", ".bin"))
  raise FileNotFoundError(f"no weights in {folder!r}: expected one of {wanted} (or a sharded *.index.json); "
                          f"found {sorted(os.listdir(folder))}.")


def read_folder_state_dict(folder: str, stems: tuple[str, ...], variant: Optional[str] = None
                           ) -> dict[str, np.ndarray]:
  state: dict[str, np.ndarray] = {}
  for path in weight_files(folder, stems, variant):
    state.update(read_state_dict(path))
  return state


# ----------------------------------------------------------------------------------------------------------
# Name and layout rules.

def _module_path(torch_module: str) -> Path:
  parts: list[str] = []
  for p in torch_module.split("."):
    p = _LEGACY_ATTENTION.get(p, p)
    for q in p.split("."):
      if q.isdigit() and parts and parts[-1] in _LIST_NAMES:
        parts[-1] = f"{parts[-1]}_{q}"
      else:
        parts.append(q)
  return tuple(parts)


def make_rename(template: Any, strip_prefix: str = "") -> Callable[[str, np.ndarray], Optional[tuple]]:
  """A convert_strict rename rule from torch names to the Flax paths of `template` (a params tree)."""
  flat = traverse_util.flatten_dict(template)

  def rename(name: str, tensor: np.ndarray):
    if strip_prefix and name.startswith(strip_prefix):
      name = name[len(strip_prefix):]
    module, _, leaf = name.rpartition(".")
    path = _module_path(module)
    if leaf == "bias":
      return path + ("bias",), tensor
    if leaf != "weight":
      # A bare nn.Parameter (e.g. AttentionPooling.positional_embedding) keeps its name.
      return (path + (leaf,), tensor) if path + (leaf,) in flat else None
    for kind in ("kernel", "scale", "embedding"):
      target = flat.get(path + (kind,))
      if target is None:
        continue
      if kind != "kernel":
        return path + (kind,), tensor
      if len(target.shape) == 4 and tensor.ndim == 4:
        return path + (kind,), conv_kernel(tensor)
      if len(target.shape) == 2 and tensor.ndim == 4 and tensor.shape[2:] == (1, 1):
        tensor = tensor[:, :, 0, 0]  # a 1x1 convolution stored for one of our Dense layers
      return path + (kind,), dense_kernel(tensor) if tensor.ndim == 2 else tensor
    return path + ("kernel" if tensor.ndim > 1 else "scale",), tensor  # reported as unexpected

  return rename


def to_state_dict(params: Any, conv_1x1: Callable[[Path], bool] = lambda p: False, prefix: str = "",
                  dtype: Optional[Any] = None) -> dict[str, np.ndarray]:
  """Our params tree -> torch-named numpy state dict (the inverse of make_rename).

  conv_1x1(module path) tells which Dense kernels are stored as [out, in, 1, 1] convolutions.
  """
  if "params" in params:  # {"params": ...} variables (other collections are not weights)
    params = params["params"]
  out = {}
  for path, value in traverse_util.flatten_dict(params).items():
    value = np.asarray(jax.device_get(value))
    if value.dtype not in (np.float32, np.float16, np.float64):
      value = value.astype(np.float32)  # e.g. bfloat16, which safetensors' numpy writer cannot store
    if dtype is not None:
      value = value.astype(dtype)
    mods, leaf = path[:-1], path[-1]
    names = []
    for m in mods:
      base, _, idx = m.rpartition("_")
      names.extend([base, idx] if idx.isdigit() and base in _LIST_NAMES else [m])
    if leaf == "kernel":
      if value.ndim == 4:
        value = np.transpose(value, (3, 2, 0, 1))
      else:
        value = value.T
        if conv_1x1(mods):
          value = value[:, :, None, None]
    torch_leaf = "weight" if leaf in ("kernel", "scale", "embedding") else leaf
    out[prefix + ".".join(names) + "." + torch_leaf] = np.ascontiguousarray(value)
  return out


# ----------------------------------------------------------------------------------------------------------
# Abstract parameter trees (shapes only) of each model.

def unet_dummy_inputs(cfg: UNetConfig) -> tuple:
  s = cfg.downsample_factor
  return (jnp.zeros((1, s, s, cfg.in_channels)), jnp.zeros((1,)), jnp.zeros((1, 1, cfg.cross_attention_dim)))


def vae_dummy_inputs(cfg: VAEConfig) -> tuple:
  s = cfg.downsample_factor
  return (jnp.zeros((1, s, s, cfg.in_channels)),)


def text_dummy_inputs(cfg: TextConfig) -> tuple:
  return (jnp.zeros((1, 1), jnp.int32),)


_ABSTRACT_CACHE: dict = {}


def _dummy_inputs(module: Any) -> tuple:
  makers = {UNet2DConditionModel: unet_dummy_inputs, AutoencoderKL: vae_dummy_inputs,
            CLIPTextTransformer: text_dummy_inputs}
  if type(module) not in makers:
    raise TypeError(f"expected one of {[c.__name__ for c in makers]}, got {type(module).__name__}.")
  return makers[type(module)](module.config)


def abstract_variables(module: Any) -> dict:
  """{"params": ShapeDtypeStruct tree} of one of our three models, without allocating anything (cached per
  config, since tracing a full-size UNet's init takes seconds)."""
  key = (type(module), module.config, jnp.dtype(module.param_dtype).name)
  if key not in _ABSTRACT_CACHE:
    inputs = _dummy_inputs(module)
    _ABSTRACT_CACHE[key] = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *inputs))
  return _ABSTRACT_CACHE[key]


def init_variables(module: Any, rng: jax.Array) -> dict:
  """Randomly initialised {"params": ...} of one of our three models (for training from scratch).

  On CPU the init is compiled with XLA's cheap settings: its dozens of truncated-normal initializers otherwise
  take tens of seconds to optimise for a program that runs once (3x faster for a tiny UNet).
  """
  if isinstance(rng, jax.core.Tracer):  # inside a caller's jit (e.g. a trainer's sharded init): no nested options
    return module.init(rng, *_dummy_inputs(module))
  return jax.jit(module.init, compiler_options=run_once_compiler_options())(rng, *_dummy_inputs(module))


# ----------------------------------------------------------------------------------------------------------
# Per-model conversion of state dicts.

def _convert(state_dict, module, source: str, strip_prefix: str = "", ignore=()) -> dict:
  template = abstract_variables(module)["params"]
  params = convert_strict(state_dict, template, make_rename(template, strip_prefix), source=source, ignore=ignore)
  return {"params": params}


def unet_from_state_dict(state_dict: dict, module: UNet2DConditionModel, source: str = "the UNet state dict"
                         ) -> dict:
  return _convert(state_dict, module, source)


def vae_from_state_dict(state_dict: dict, module: AutoencoderKL, source: str = "the VAE state dict") -> dict:
  return _convert(state_dict, module, source)


def text_encoder_from_state_dict(state_dict: dict, module: CLIPTextTransformer,
                                 source: str = "the text encoder state dict") -> dict:
  return _convert(state_dict, module, source, strip_prefix="text_model.", ignore=_TEXT_IGNORE)


def unet_state_dict(variables: Any, config: UNetConfig, dtype=None) -> dict[str, np.ndarray]:
  """diffusers UNet2DConditionModel state dict of our UNet params (proj_in/out as 1x1 convs unless the config
  uses linear projections)."""
  conv = lambda mods: not config.use_linear_projection and mods[-1] in ("proj_in", "proj_out")
  return to_state_dict(variables, conv, dtype=dtype)


def vae_state_dict(variables: Any, config: VAEConfig, dtype=None) -> dict[str, np.ndarray]:
  return to_state_dict(variables, dtype=dtype)


def text_encoder_state_dict(variables: Any, config: TextConfig, dtype=None) -> dict[str, np.ndarray]:
  """transformers CLIPTextModel state dict, with the `text_model.` prefix that every transformers version reads."""
  return to_state_dict(variables, prefix="text_model.", dtype=dtype)


# ----------------------------------------------------------------------------------------------------------
# Folder-level API used by the pipeline.

def load_unet(folder: str, dtype: Any = jnp.float32, *, param_dtype: Any = jnp.float32,
              variant: Optional[str] = None, remat: bool = False) -> tuple[UNet2DConditionModel, dict]:
  """diffusers `unet/` folder -> (UNet2DConditionModel computing in `dtype`, {"params": ...} in param_dtype)."""
  module = UNet2DConditionModel(unet_config(folder), dtype=dtype, param_dtype=param_dtype, remat=remat)
  return module, unet_from_state_dict(read_folder_state_dict(folder, DIFFUSERS_STEMS, variant), module, folder)


def load_vae(folder: str, dtype: Any = jnp.float32, *, param_dtype: Any = jnp.float32,
             variant: Optional[str] = None) -> tuple[AutoencoderKL, dict]:
  """diffusers `vae/` folder -> (AutoencoderKL, {"params": ...}); scaling_factor is module.config.scaling_factor."""
  module = AutoencoderKL(vae_config(folder), dtype=dtype, param_dtype=param_dtype)
  return module, vae_from_state_dict(read_folder_state_dict(folder, DIFFUSERS_STEMS, variant), module, folder)


def load_text_encoder(folder: str, dtype: Any = jnp.float32, *, param_dtype: Any = jnp.float32,
                      variant: Optional[str] = None) -> tuple[CLIPTextTransformer, dict]:
  """transformers `text_encoder/` folder (CLIPTextModel) -> (CLIPTextTransformer, {"params": ...})."""
  module = CLIPTextTransformer(text_config(folder), dtype=dtype, param_dtype=param_dtype)
  state = read_folder_state_dict(folder, TRANSFORMERS_STEMS, variant)
  return module, text_encoder_from_state_dict(state, module, folder)


def _save(folder: str, config: dict, state: dict[str, np.ndarray], filename: str) -> str:
  from safetensors.numpy import save_file
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  path = os.path.join(folder, filename)
  save_file(state, path, metadata={"format": "pt"})  # transformers refuses safetensors without this tag
  return path


def save_unet(folder: str, module: UNet2DConditionModel, variables: Any, dtype=None) -> str:
  """Writes `folder/config.json` and `folder/diffusion_pytorch_model.safetensors` (diffusers layout).

  variables: {"params": ...} or the params tree, fully addressable on this process (gather sharded
  multi-host arrays first). dtype: optional numpy dtype to store (e.g. np.float16); default the params'.
  """
  return _save(folder, module.config.to_diffusers(), unet_state_dict(variables, module.config, dtype),
               "diffusion_pytorch_model.safetensors")


def save_vae(folder: str, module: AutoencoderKL, variables: Any, dtype=None) -> str:
  """Writes a diffusers AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors)."""
  return _save(folder, module.config.to_diffusers(), vae_state_dict(variables, module.config, dtype),
               "diffusion_pytorch_model.safetensors")


def save_text_encoder(folder: str, module: CLIPTextTransformer, variables: Any, dtype=None) -> str:
  """Writes a transformers CLIPTextModel folder (config.json + model.safetensors)."""
  return _save(folder, module.config.to_transformers(), text_encoder_state_dict(variables, module.config, dtype),
               "model.safetensors")


# ----------------------------------------------------------------------------------------------------------
# Command line: single file -> diffusers folder.

def build_parser():
  import argparse
  p = argparse.ArgumentParser(prog="python -m diffusion_jax.convert",
                              description="Converts a single-file Stable Diffusion checkpoint (original CompVis / "
                              "Stability layout) into a diffusers folder that diffusers and diffusion_jax read.")
  p.add_argument("--from-single-file", required=True, metavar="CKPT",
                 help=".safetensors or .ckpt file (model.diffusion_model.*, first_stage_model.*, cond_stage_model.*)")
  p.add_argument("--config", required=True,
                 help="a diffusers SD folder giving the architecture, scheduler and tokenizer, or a preset: "
                      "sd1, sd2-base, sd2-v")
  p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the config folder's; for a preset, "
                 "open_clip_torch's CLIP vocabulary)")
  p.add_argument("--use-ema", action="store_true", help="take the UNet's EMA weights (model_ema.*) of a full "
                 "training checkpoint")
  p.add_argument("--out", required=True, help="output folder")
  return p


def main(argv=None) -> str:
  from diffusion_jax.single_file import from_single_file
  from t2i_common.logging import setup_cli_logging
  args = build_parser().parse_args(argv)
  setup_cli_logging()
  try:
    pipe = from_single_file(args.from_single_file, config=args.config, tokenizer=args.tokenizer,
                            use_ema=args.use_ema)
  except (ValueError, FileNotFoundError) as e:  # bad file, config or weights: the message, not a traceback
    raise SystemExit(f"error: {e}") from None
  out = pipe.save_pretrained(args.out)
  print(f"wrote {os.path.abspath(out)} (diffusers StableDiffusionPipeline layout)")
  return out


if __name__ == "__main__":
  main()
