"""Names of the reference's netG / netD tensors in our Flax trees, and the architecture a state dict implies.

Used by attngan_jax.convert_torch (the strict import and the generator / discriminator kinds). Each rename table
maps a PyTorch module path (regular expression) to a Flax module path and a layer type; the layer type maps the
leaf tensors (Linear and Conv weights transposed, BatchNorm weight/bias/running stats to params and batch_stats).
"""
from __future__ import annotations

import re
from typing import Callable, Optional, Union

import ml_collections
import numpy as np

from attngan_jax.gan.config import PRESETS, gan_model_config
from t2i_common.weights import BATCHNORM_LEAVES, conv_kernel, dense_kernel

Target = Union[str, Callable[[re.Match], str]]

GENERATOR_TABLE: list[tuple[str, Target, str]] = [
    (r"ca_net\.fc", "ca_net/fc", "dense"),
    (r"h_net1\.fc\.0", "h_net1/fc", "dense"),
    (r"h_net1\.fc\.1", "h_net1/fc_bn", "bn"),
    (r"h_net1\.upsample(\d+)\.1", r"h_net1/upsample\1/conv", "conv"),
    (r"h_net1\.upsample(\d+)\.2", r"h_net1/upsample\1/bn", "bn"),
    (r"(h_net\d+)\.att\.conv_context", r"\1/att/conv_context", "conv"),
    (r"(h_net\d+)\.residual\.(\d+)\.block\.0", r"\1/residual_\2/conv1", "conv"),
    (r"(h_net\d+)\.residual\.(\d+)\.block\.1", r"\1/residual_\2/bn1", "bn"),
    (r"(h_net\d+)\.residual\.(\d+)\.block\.3", r"\1/residual_\2/conv2", "conv"),
    (r"(h_net\d+)\.residual\.(\d+)\.block\.4", r"\1/residual_\2/bn2", "bn"),
    (r"(h_net\d+)\.upsample\.1", r"\1/upsample/conv", "conv"),
    (r"(h_net\d+)\.upsample\.2", r"\1/upsample/bn", "bn"),
    (r"(img_net\d+)\.img\.0", r"\1/conv", "conv"),
]

# encode_image_by_16times is one Sequential: convs at 0, 2, 5, 8 and BatchNorms at 3, 6, 9.
_ENCODER_CONV = {"0": "0", "2": "1", "5": "2", "8": "3"}
_ENCODER_BN = {"3": "1", "6": "2", "9": "3"}


def _down_index(m: re.Match) -> str:  # img_code_s32 -> down_0, img_code_s64 -> down_1, ...
  return str(int(np.log2(int(m.group(1)) // 32)))


DISCRIMINATOR_TABLE: list[tuple[str, Target, str]] = [
    (r"img_code_s16\.(0|2|5|8)", lambda m: f"image_encoder/conv{_ENCODER_CONV[m.group(1)]}", "conv"),
    (r"img_code_s16\.(3|6|9)", lambda m: f"image_encoder/bn{_ENCODER_BN[m.group(1)]}", "bn"),
    (r"img_code_s(\d+)\.0", lambda m: f"down_{_down_index(m)}/conv", "conv"),
    (r"img_code_s(\d+)\.1", lambda m: f"down_{_down_index(m)}/bn", "bn"),
    (r"img_code_s\d+_(\d+)\.0", lambda m: f"squeeze_{int(m.group(1)) - 1}/conv", "conv"),
    (r"img_code_s\d+_(\d+)\.1", lambda m: f"squeeze_{int(m.group(1)) - 1}/bn", "bn"),
    (r"UNCOND_DNET\.outlogits\.0", "uncond_dnet/outlogits", "conv"),
    (r"COND_DNET\.outlogits\.0", "cond_dnet/outlogits", "conv"),
    (r"COND_DNET\.jointConv\.0", "cond_dnet/joint_conv/conv", "conv"),
    (r"COND_DNET\.jointConv\.1", "cond_dnet/joint_conv/bn", "bn"),
]


def _leaf(kind: str, path: tuple[str, ...], leaf: str, w: np.ndarray):
  if kind == "bn":
    if leaf not in BATCHNORM_LEAVES:
      return None
    collection, name = BATCHNORM_LEAVES[leaf]
    return (collection,) + path + (name,), w
  if leaf == "bias":
    return ("params",) + path + ("bias",), w
  if leaf == "weight":
    if kind == "dense" and w.ndim == 2:
      return ("params",) + path + ("kernel",), dense_kernel(w)
    if kind == "conv" and w.ndim == 4:
      return ("params",) + path + ("kernel",), conv_kernel(w)
  return None


def table_rename(table: list[tuple[str, Target, str]]):
  """A convert_strict rename rule from a table of (torch module regex, flax module path, layer type)."""
  compiled = [(re.compile(p), target, kind) for p, target, kind in table]

  def rename(name: str, w: np.ndarray):
    if "." not in name:
      return None
    module, leaf = name.rsplit(".", 1)
    for pattern, target, kind in compiled:
      m = pattern.fullmatch(module)
      if m:
        path = target(m) if callable(target) else m.expand(target)
        return _leaf(kind, tuple(path.split("/")), leaf, w)
    return None
  return rename


# ------------------------------------------------------------------------------ architecture from shapes

GENERATOR_KEYS = ("gf_dim", "r_num", "branch_num", "base_size", "z_dim", "condition_dim", "embedding_dim")
DISCRIMINATOR_KEYS = ("df_dim", "embedding_dim")


def _indices(state, pattern: str) -> list[int]:
  r = re.compile(pattern)
  return sorted({int(m.group(1)) for k in state for m in [r.match(k)] if m})


def generator_architecture(state: dict[str, np.ndarray]) -> dict:
  """The G_NET options a netG state dict was built with (GENERATOR_KEYS); r_num None with one branch."""
  needed = ("ca_net.fc.weight", "h_net1.fc.0.weight", "img_net1.img.0.weight")
  if any(k not in state for k in needed):
    raise ValueError(f"not an AttnGAN generator (netG) state dict: expected {', '.join(needed)}; "
                     f"found {sorted(state)[:6]}...")
  ca = state["ca_net.fc.weight"]
  condition_dim = ca.shape[0] // 4
  upblocks = _indices(state, r"h_net1\.upsample(\d+)\.")
  residual = _indices(state, r"h_net2\.residual\.(\d+)\.")
  return {
      "gf_dim": int(state["img_net1.img.0.weight"].shape[1]),
      "r_num": len(residual) if residual else None,
      "branch_num": max(_indices(state, r"img_net(\d+)\.")),
      "base_size": 4 * 2 ** (max(upblocks) if upblocks else 0),
      "z_dim": int(state["h_net1.fc.0.weight"].shape[1]) - condition_dim,
      "condition_dim": int(condition_dim),
      "embedding_dim": int(ca.shape[1]),
  }


def discriminator_architecture(state: dict[str, np.ndarray]) -> dict:
  """df_dim, embedding_dim and image_size (64, 128 or 256) of a reference netD state dict."""
  needed = ("img_code_s16.0.weight", "COND_DNET.jointConv.0.weight")
  if any(k not in state for k in needed):
    raise ValueError(f"not an AttnGAN discriminator (netD) state dict: expected {', '.join(needed)}; "
                     f"found {sorted(state)[:6]}...")
  df_dim = int(state["img_code_s16.0.weight"].shape[0])
  downs = _indices(state, r"img_code_s(\d+)\.0\.")
  return {"df_dim": df_dim,
          "embedding_dim": int(state["COND_DNET.jointConv.0.weight"].shape[1]) - 8 * df_dim,
          "image_size": 64 * 2 ** len([d for d in downs if d > 16])}


def describe(arch: dict) -> str:
  """'gf_dim=32, r_num=2, ... (the birds preset)' for error messages."""
  text = ", ".join(f"{k}={v}" for k, v in arch.items() if v is not None)
  for name in PRESETS:
    preset = gan_model_config(name)
    if all(v is None or preset[k] == v for k, v in arch.items() if k in preset):
      return f"{text} (the {name} preset's sizes)"
  return text


def check_architecture(arch: dict, model: ml_collections.ConfigDict, keys: tuple[str, ...], source: str,
                       what: str) -> None:
  """Raises if the architecture read from a file differs from config.model, naming the config it fits."""
  diff = [f"{k}: file {arch[k]}, config {model[k]}" for k in keys if arch.get(k) is not None and arch[k] != model[k]]
  if diff:
    overrides = " ".join(f"--config.model.{k}={arch[k]}" for k in keys if arch.get(k) is not None
                         and arch[k] != model[k])
    raise ValueError(f"the {what} in {source} was built with another config than config.model:\n  "
                     + "\n  ".join(diff) + f"\nThe file looks like: {describe(arch)}.\n"
                     f"Use a config with those values (e.g. {overrides}).")
