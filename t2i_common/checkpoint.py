"""Checkpoints: training state + data-iterator position + config, saved together by orbax; preemption handling.

Layout: `<workdir>/checkpoints/<step>/{state, data, config}`: `state` is the trainer's whole state pytree
(parameters, optimizer state, EMA, step, RNG, ...; saved sharded, asynchronously), `data` is every process's
iterator position (JSON), `config` the experiment config (JSON). `keep` most recent steps are kept.

Resuming checks compatibility before loading anything, so a changed model never silently loads garbage:
- these config sections must match the saved config: `model` and `data`, except the keys in `IGNORED_KEYS`
  (where the data lives, how many workers and threads read it, whether to skip bad records: moving a dataset
  or changing the machine is fine).
  Everything else (train.num_steps, learning-rate schedule, logging, checkpoint, mesh, ...) may change: training
  longer, on another slice, with another log interval is normal.
- the state's tree structure, shapes and dtypes must equal the saved ones (catches model code changes that
  the config does not show).
Either mismatch raises `IncompatibleCheckpointError` naming the differing keys; use a new workdir to start over.

Preemption (`PreemptionGuard`): Cloud TPU and SLURM send SIGTERM before taking the machine; the guard turns that
into "save at the next step boundary and return". With several processes, all must stop at the same step, so it
uses JAX's preemption sync service (`multihost_utils.reached_preemption_sync_point`), which listens for SIGTERM
itself and agrees on a step; a single process uses a Python signal handler.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import signal
import threading
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from t2i_common.config import config_to_json

MATCH_SECTIONS = ("model", "data")
# Where the data lives and how it is read: none of it changes what the model sees.
IGNORED_KEYS = ("data.data_dir", "data.num_workers", "data.read_threads", "data.prefetch_buffer",
                "data.worker_buffer_size", "data.on_bad_record", "data.cub.manual_dir", "data.cub.prepare",
                "data.coco.manual_dir", "data.coco.prepare")

log = logging.getLogger(__name__)


class IncompatibleCheckpointError(ValueError):
  """The checkpoint in the workdir was written by a different model or data set-up."""


# ----------------------------------------------------------------------------------------------------------------
# Comparison helpers.

def _flatten_dict(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, Mapping):
    out = {}
    for k, v in tree.items():
      out.update(_flatten_dict(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                       sections: Sequence[str] = MATCH_SECTIONS,
                       ignored: Sequence[str] = IGNORED_KEYS) -> list[str]:
  """Lines "key: saved X, now Y" for keys in `sections` that differ (missing keys count as differences)."""
  a, b = _flatten_dict(saved), _flatten_dict(current)
  missing = object()
  lines = []
  for key in sorted(set(a) | set(b)):
    if key.split(".")[0] not in sections or any(key == i or key.startswith(i + ".") for i in ignored):
      continue
    x, y = a.get(key, missing), b.get(key, missing)
    if x != y:
      show = lambda v: "(absent)" if v is missing else json.dumps(v)
      lines.append(f"{key}: saved {show(x)}, now {show(y)}")
  return lines


def _key_name(entry: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _leaf_signature(leaf: Any) -> tuple[tuple[int, ...], str]:
  if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    # Orbax stores typed PRNG keys as their raw uint32 data.
    data = jax.eval_shape(jax.random.key_data, leaf)
    return tuple(data.shape), str(data.dtype)
  return tuple(leaf.shape), str(np.dtype(leaf.dtype))


def state_signature(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """path -> (shape, dtype) of every array leaf, with paths spelled as orbax stores them ("params/Dense_0/kernel")."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(_key_name(k) for k in path): _leaf_signature(leaf) for path, leaf in leaves}


def _metadata_signature(tree: Any, prefix: str = "") -> dict[str, tuple[tuple[int, ...], str]]:
  if isinstance(tree, Mapping):
    items = tree.items()
  elif isinstance(tree, (list, tuple)):
    items = enumerate(tree)
  elif tree is None:
    return {}
  else:
    return {prefix[:-1]: (tuple(tree.shape), str(np.dtype(tree.dtype)))}
  out = {}
  for k, v in items:
    out.update(_metadata_signature(v, f"{prefix}{k}/"))
  return out


def state_differences(saved: Mapping[str, tuple], current: Mapping[str, tuple], limit: int = 20) -> list[str]:
  lines = []
  for path in sorted(set(saved) | set(current)):
    if path not in current:
      lines.append(f"{path}: in the checkpoint, not in the current state")
    elif path not in saved:
      lines.append(f"{path}: in the current state, not in the checkpoint")
    elif saved[path] != current[path]:
      (s_shape, s_dtype), (c_shape, c_dtype) = saved[path], current[path]
      lines.append(f"{path}: saved {s_dtype}{list(s_shape)}, now {c_dtype}{list(c_shape)}")
  if len(lines) > limit:
    lines = lines[:limit] + [f"... and {len(lines) - limit} more"]
  return lines


# ----------------------------------------------------------------------------------------------------------------
# Per-process data-iterator state (each process reads its own shard, so each has its own position).

def _encode_data_state(state: Any) -> dict[str, Any]:
  if isinstance(state, bytes):  # grain.DataLoader iterators give bytes
    return {"bytes_b64": base64.b64encode(state).decode("ascii")}
  return {"json": state}


def _decode_data_state(entry: Mapping[str, Any]) -> Any:
  if "bytes_b64" in entry:
    return base64.b64decode(entry["bytes_b64"])
  return entry["json"]


def _gather_strings(text: str) -> list[str]:
  """Every process's `text`, in process order (a collective: all processes must call it)."""
  if jax.process_count() == 1:
    return [text]
  data = np.frombuffer(text.encode("utf-8"), np.uint8)
  lengths = multihost_utils.process_allgather(np.array([data.size], np.int32))
  padded = np.zeros(int(np.max(lengths)), np.uint8)
  padded[:data.size] = data
  gathered = multihost_utils.process_allgather(padded)
  return [bytes(row[:int(n)]).decode("utf-8") for row, n in zip(gathered, np.asarray(lengths).reshape(-1))]


# ----------------------------------------------------------------------------------------------------------------

class Checkpointer:
  """Saves and restores (state, data position, config) under `<workdir>/checkpoints` with orbax.

  All processes must call `save` and `restore` together (orbax writes each process's shards; process 0 writes
  the JSON items).
  """

  def __init__(self, workdir: str, config: Any = None, *, keep: int = 3, async_save: bool = True,
               match_sections: Sequence[str] = MATCH_SECTIONS, ignored_keys: Sequence[str] = IGNORED_KEYS):
    # orbax wants absolute paths; cloud paths (gs://...) already are.
    local = "://" not in str(workdir)
    self.directory = epath.Path(os.path.abspath(workdir) if local else workdir) / "checkpoints"
    self._config = json.loads(config_to_json(config)) if config is not None else None
    self._match_sections, self._ignored_keys = tuple(match_sections), tuple(ignored_keys)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
    # Handlers declared up front: a fresh process (resuming) can then read item metadata before any save.
    handlers = {"state": ocp.StandardCheckpointHandler(), "config": ocp.JsonCheckpointHandler(),
                "data": ocp.JsonCheckpointHandler()}
    self._manager = ocp.CheckpointManager(self.directory, item_handlers=handlers, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: Any = None, force: bool = False) -> bool:
    """Starts saving `state` (and the iterator position) as `step`; returns False if that step already exists.

    Asynchronous when async_save: returns once the arrays are copied off the devices, the write finishes in the
    background (`wait()` blocks until it has). A step is only visible to `latest_step` once complete, so a
    process killed mid-write resumes from the previous checkpoint. `force` is accepted for symmetry with orbax:
    every call saves (the caller decides the schedule).
    """
    del force
    step = int(step)
    if step in self._manager.all_steps():
      return False
    items = {"state": ocp.args.StandardSave(state)}
    if self._config is not None:
      items["config"] = ocp.args.JsonSave(self._config)
    if data_state is not None:
      per_process = _gather_strings(json.dumps(_encode_data_state(data_state)))
      items["data"] = ocp.args.JsonSave({"num_processes": len(per_process),
                                         "per_process": [json.loads(s) for s in per_process]})
    return bool(self._manager.save(step, args=ocp.args.Composite(**items), force=True))

  def saved_config(self, step: int | None = None) -> dict[str, Any] | None:
    step = self._step_or_latest(step)
    if "config" not in self._items(step):
      return None
    return self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

  def check_compatible(self, abstract_state: Any, step: int | None = None) -> None:
    """Raises IncompatibleCheckpointError if the config sections or the state's shapes differ from `step`'s."""
    step = self._step_or_latest(step)
    problems = []
    saved_config = self.saved_config(step)
    if saved_config is not None and self._config is not None:
      diff = config_differences(saved_config, self._config, self._match_sections, self._ignored_keys)
      if diff:
        problems.append("config keys that must match (sections " + ", ".join(self._match_sections) + "):\n  "
                        + "\n  ".join(diff))
    saved_tree = self._items(step)["state"]
    saved_tree = getattr(saved_tree, "tree", saved_tree)
    diff = state_differences(_metadata_signature(saved_tree), state_signature(abstract_state))
    if diff:
      problems.append("state arrays:\n  " + "\n  ".join(diff))
    if problems:
      raise IncompatibleCheckpointError(
          f"the checkpoint at step {step} in {self.directory} does not fit this run:\n" + "\n".join(problems)
          + "\nResume with the original config, or train in a new workdir.")

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, Any]:
    """Loads `step` (default: latest) into `abstract_state` (ShapeDtypeStructs with shardings, e.g. from
    `parallel.abstract_with_shardings`); returns (state, this process's data-iterator state or None)."""
    step = self._step_or_latest(step)
    self.check_compatible(abstract_state, step)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    has_data = "data" in self._items(step)
    if has_data:
      items["data"] = ocp.args.JsonRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    data_state = None
    if has_data:
      data = restored["data"]
      if data["num_processes"] != jax.process_count():
        raise IncompatibleCheckpointError(
            f"the checkpoint at step {step} holds data-iterator positions for {data['num_processes']} processes, "
            f"this run has {jax.process_count()}; each process reads its own shard, so the positions do not "
            f"carry over. Resume with {data['num_processes']} processes, or train in a new workdir.")
      data_state = _decode_data_state(data["per_process"][jax.process_index()])
    log.info("restored checkpoint step %d from %s", step, self.directory)
    return restored["state"], data_state

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def _items(self, step: int) -> Mapping[str, Any]:
    return self._manager.item_metadata(step)

  def _step_or_latest(self, step: int | None) -> int:
    if step is None:
      step = self._manager.latest_step()
      if step is None:
        raise FileNotFoundError(f"no checkpoint in {self.directory}.")
    return int(step)


class PreemptionGuard:
  """Turns SIGTERM into "stop after the current step": use `should_stop(step)` at every step boundary.

  Single process: a Python signal handler sets a flag (previous handlers are restored on exit). Several
  processes: JAX's preemption sync service (started by jax.distributed.initialize) receives the signal on any
  process and all processes agree on the step at which `should_stop` returns True, so they save together.
  Call `should_stop` at every step, on every process.
  """

  def __init__(self, signals: Sequence[int] = (signal.SIGTERM,)):
    self._signals = tuple(signals)
    self._previous: dict[int, Any] = {}
    self._requested = threading.Event()
    self._multi = jax.process_count() > 1

  @property
  def requested(self) -> bool:
    return self._requested.is_set()

  def request(self, *_: Any) -> None:
    """Marks a stop request (what the signal handler does; usable from tests and other code)."""
    self._requested.set()

  def should_stop(self, step: int) -> bool:
    if self._multi:
      # Do not install a Python handler here: it would replace the sync service's own SIGTERM handler.
      if multihost_utils.reached_preemption_sync_point(int(step)):
        self._requested.set()
    return self._requested.is_set()

  def __enter__(self) -> "PreemptionGuard":
    if not self._multi and threading.current_thread() is threading.main_thread():
      for sig in self._signals:
        self._previous[sig] = signal.signal(sig, self.request)
    return self

  def __exit__(self, *exc: Any) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
