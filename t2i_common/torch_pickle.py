"""Reading PyTorch pickles (.ckpt, .bin, .pt, .pth) without running code from them.

    obj, skipped = load_torch_pickle("model.ckpt")   # skipped: names of the classes that were not built

torch.load(weights_only=True) is tried first. Training checkpoints often pickle more than tensors (PyTorch
Lightning callbacks, argparse Namespaces, optimizer wrappers), and weights_only then refuses the whole file. Such
a file is read again with an unpickler that builds only what torch's weights-only loader allows (tensors,
storages, dtypes, plain containers) and turns every other class or function named in the file into an inert
`Placeholder`: nothing the file names is imported or called, so the tensors come out and the rest is dropped.
"""
from __future__ import annotations

import pickle
import types
from typing import Any


class Placeholder:
  """Stands for a pickled object whose class was not loaded; `qualname` says which. Keeps what the pickle gave
  it (constructor arguments, state, items) for inspection, and does nothing else."""
  qualname = "?"

  def __init__(self, *args, **kwargs):
    self.args, self.kwargs, self.state, self.items = args, kwargs, None, []

  def __setstate__(self, state):
    self.state = state

  def __setitem__(self, key, value):  # a pickled dict subclass
    self.items.append((key, value))

  def append(self, value):  # a pickled list subclass
    self.items.append(value)

  def extend(self, values):
    self.items.extend(values)

  def __repr__(self):
    return f"<not loaded: {self.qualname}>"


def _allowed_globals() -> dict[str, Any]:
  import collections

  import torch
  try:  # torch's own allowlist of the weights-only loader (private; the fallback covers plain state dicts)
    from torch._weights_only_unpickler import _get_allowed_globals
    allowed = dict(_get_allowed_globals())
  except ImportError:
    allowed = {}
  allowed.setdefault("collections.OrderedDict", collections.OrderedDict)
  allowed.setdefault("torch._utils._rebuild_tensor_v2", torch._utils._rebuild_tensor_v2)
  allowed.setdefault("torch._utils._rebuild_parameter", torch._utils._rebuild_parameter)
  allowed.setdefault("torch.Size", torch.Size)
  return allowed


def _restricted_pickle_module(skipped: set[str]) -> types.SimpleNamespace:
  """A pickle module for torch.load whose Unpickler builds allowed globals and placeholders for all others."""
  allowed = _allowed_globals()

  class Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
      key = f"{module}.{name}"
      if key in allowed:
        return allowed[key]
      skipped.add(key)
      return type(name, (Placeholder,), {"qualname": key})

  return types.SimpleNamespace(Unpickler=Unpickler, load=lambda f, **kw: Unpickler(f, **kw).load(),
                               __name__="t2i_common.torch_pickle.restricted")


def load_torch_pickle(path: str) -> tuple[Any, list[str]]:
  """(the unpickled object, sorted names of the classes/functions replaced by placeholders)."""
  import torch
  try:
    return torch.load(path, map_location="cpu", weights_only=True), []
  except pickle.UnpicklingError as e:
    if "Unsupported global" not in str(e) and "GLOBAL" not in str(e):
      raise
  skipped: set[str] = set()
  # weights_only=False only because a pickle_module is given: the module's Unpickler is the restriction.
  obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle_module(skipped))
  return obj, sorted(skipped)
