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
  """Reads a .safetensors, .bin, .pt or .pth file into {name: float numpy array}."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weight file {path!r} does not exist.")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    try:
      return dict(load_file(path))
    except Exception:  # bf16 tensors cannot be read by the numpy backend; go through torch.
      from safetensors.torch import load_file as load_torch
      return {k: _torch_to_numpy(v) for k, v in load_torch(path).items()}
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"reading {path!r} needs PyTorch (a pickled checkpoint); install the 'parity' extra "
                      "or convert the file to .safetensors.") from e
  obj = torch.load(path, map_location="cpu", weights_only=True)
  if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path!r} holds a {type(obj).__name__}, not a state dict of tensors.")
  return {k: _torch_to_numpy(v) for k, v in obj.items() if hasattr(v, "detach")}


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
