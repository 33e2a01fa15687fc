"""Strict import of PyTorch state dicts into Flax parameter trees.

Every converter in the project (DAMSM `.pth` files, diffusers folders, torchvision Inception) maps each
PyTorch tensor name to a Flax path through an explicit rename rule and then calls `convert_strict`, which
fails with the full lists of missing, unexpected and mis-shaped tensors instead of loading a partial model.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Iterable, Mapping, Optional

import jax
import numpy as np
from flax import traverse_util

Path = tuple[str, ...]
# A rename rule: (torch name, tensor) -> (flax path, converted array), or None if the name is not ours.
RenameFn = Callable[[str, np.ndarray], Optional[tuple[Path, np.ndarray]]]


class WeightMismatchError(ValueError):
  """Weights that do not fit the model: missing, unexpected or mis-shaped tensors."""

  def __init__(self, source: str, missing: list[str], unexpected: list[str], misshaped: list[str]):
    self.missing, self.unexpected, self.misshaped = missing, unexpected, misshaped

    def block(title, names):
      if not names:
        return ""
      shown = "\n    ".join(names[:40])
      more = f"\n    ... and {len(names) - 40} more" if len(names) > 40 else ""
      return f"\n  {title} ({len(names)}):\n    {shown}{more}"

    super().__init__(
        f"weights from {source} do not match the model:"
        + block("missing from the file", missing)
        + block("unexpected in the file", unexpected)
        + block("wrong shape (name: file shape -> model shape)", misshaped)
        + "\nCheck that the model config matches the checkpoint (e.g. the config.json beside the weights).")


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a .safetensors file, or a PyTorch pickle (.bin, .ckpt, .pt, .pth) without running pickled code, into
  {name: float numpy array}; a training checkpoint's "state_dict" entry is taken. Damaged files and files that
  hold something else than a state dict raise ValueError naming the file and what was expected."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weight file {path!r} does not exist.")
  if path.endswith(".safetensors"):
    _check_safetensors(path)
    from safetensors.numpy import load_file
    try:
      return dict(load_file(path))
    except (TypeError, ValueError):  # bf16 tensors cannot be read by the numpy backend; go through torch.
      from safetensors.torch import load_file as load_torch
      return {k: _torch_to_numpy(v) for k, v in load_torch(path).items()}
  try:
    import torch  # noqa: F401
  except ImportError as e:
    raise ImportError(f"reading {path!r} needs PyTorch (a pickled checkpoint); install the 'parity' extra "
                      "or convert the file to .safetensors.") from e
  from t2i_common.torch_pickle import Placeholder, load_torch_pickle
  try:
    obj, skipped = load_torch_pickle(path)  # never runs code from the file
  except Exception as e:  # noqa: BLE001 (torch raises UnpicklingError, RuntimeError, EOFError ... by format)
    raise ValueError(f"{path} is not a PyTorch checkpoint that can be read ({_load_error_reason(e)}); expected "
                     "a state dict of tensors saved with torch.save, or a .safetensors file.") from None
  if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
    obj = obj["state_dict"]
  if isinstance(obj, Placeholder):
    raise ValueError(f"{path} holds a pickled {obj.qualname} object, not a state dict; it was not loaded (that "
                     "would run code from the file). Save model.state_dict() instead of the model.")
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict; expected a mapping of names to "
                     "tensors (torch.save(model.state_dict())).")
  tensors = {k: _torch_to_numpy(v) for k, v in obj.items() if hasattr(v, "detach")}
  if not tensors:
    raise ValueError(f"{path} holds a mapping without tensors (keys: {sorted(map(str, obj))[:8]}); expected a "
                     "state dict of tensors.")
  if skipped:
    import logging
    logging.getLogger(__name__).warning("%s: skipped pickled objects that are not tensors (not loaded): %s",
                                        path, ", ".join(skipped))
  return tensors


def _load_error_reason(e: Exception) -> str:
  """The informative part of torch.load's error (its weights-only errors open with general advice)."""
  text = str(e)
  if "WeightsUnpickler error:" in text:
    text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
  text = " ".join(text.split())
  return f"{type(e).__name__}: {text[:200]}"


def _check_safetensors(path: str) -> None:
  """Raises ValueError naming the file if its header is unreadable or its data shorter than the header says
  (a truncated download), before safetensors' own less specific error."""
  import json
  size = os.path.getsize(path)
  expected = "a .safetensors file (8-byte header length, JSON header, tensor data)"
  with open(path, "rb") as f:
    head = f.read(8)
    n = int.from_bytes(head, "little") if len(head) == 8 else -1
    if n < 2 or n > size - 8:
      raise ValueError(f"{path} is not {expected}: it has {size} bytes and a header length of {n}; the file is "
                       "truncated or of another format.")
    try:
      header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f"{path} is not {expected}: its header is not valid JSON ({e}).") from None
  end = max([v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
             and "data_offsets" in v] or [0])
  if 8 + n + end > size:
    raise ValueError(f"{path} is truncated: its header describes {8 + n + end} bytes, the file has {size}. "
                     "Download or copy it again.")


def _torch_to_numpy(t) -> np.ndarray:
  import torch
  t = t.detach().cpu()
  if t.dtype == torch.bfloat16:
    t = t.float()
  return t.numpy()


# PyTorch BatchNorm tensor -> (Flax collection, leaf name) of a Flax BatchNorm (or attngan_jax.gan.blocks.BatchNorm).
BATCHNORM_LEAVES = {"weight": ("params", "scale"), "bias": ("params", "bias"),
                    "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


def conv_kernel(w: np.ndarray) -> np.ndarray:
  """PyTorch conv weight OIHW -> Flax HWIO."""
  return np.transpose(w, (2, 3, 1, 0))


def dense_kernel(w: np.ndarray) -> np.ndarray:
  """PyTorch linear weight (out, in) -> Flax kernel (in, out)."""
  return np.transpose(w)


def convert_strict(state_dict: Mapping[str, np.ndarray], template: Any, rename: RenameFn, *,
                   source: str = "the state dict", ignore: Iterable[str] = ()) -> dict:
  """Builds a Flax tree shaped like `template` from `state_dict`, or raises WeightMismatchError.

  template: a (possibly abstract, from jax.eval_shape) nested dict of arrays; its shapes and dtypes are
    the target. ignore: regular expressions of torch names that are known and deliberately dropped
    (e.g. BatchNorm's num_batches_tracked).
  """
  ignore_res = [re.compile(p) for p in ignore]
  flat_template = traverse_util.flatten_dict(template)
  out: dict[Path, np.ndarray] = {}
  origin: dict[Path, str] = {}
  unexpected, misshaped = [], []
  for name, tensor in state_dict.items():
    if any(r.search(name) for r in ignore_res):
      continue
    mapped = rename(name, np.asarray(tensor))
    if mapped is None:
      unexpected.append(name)
      continue
    path, value = mapped
    if path not in flat_template:
      unexpected.append(f"{name} (-> {'/'.join(path)})")
      continue
    if path in out:
      raise ValueError(f"two tensors map to {'/'.join(path)}: {origin[path]} and {name}; fix the rename rule.")
    target = flat_template[path]
    if tuple(value.shape) != tuple(target.shape):
      misshaped.append(f"{name}: {tuple(np.shape(tensor))} -> {tuple(target.shape)} at {'/'.join(path)}")
      continue
    out[path] = np.asarray(value, dtype=target.dtype)
    origin[path] = name
  missing = ["/".join(p) for p in flat_template if p not in out and not misshaped_path(p, misshaped)]
  if missing or unexpected or misshaped:
    raise WeightMismatchError(source, sorted(missing), sorted(unexpected), misshaped)
  return traverse_util.unflatten_dict(out)


def misshaped_path(path: Path, misshaped: list[str]) -> bool:
  key = " at " + "/".join(path)
  return any(m.endswith(key) for m in misshaped)


def abstract_params(module, *init_args, **init_kwargs) -> Any:
  """Parameter shapes of a Flax module without allocating them."""
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *init_args, **init_kwargs))
