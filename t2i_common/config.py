"""Loading ml_collections configs outside absl flags (tests, notebooks) with the same rules.

Entry points use `ml_collections.config_flags.DEFINE_config_file` (which gives `--config path.py:variant`
and `--config.a.b=value`); `load_config` gives the same result from Python, so tests exercise the exact
configs users run. Configs are locked: an unknown key fails at once and names the key.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import importlib.util
import json
import os
from typing import Any, Sequence

import ml_collections

from t2i_common.cli_args import parse_bool


class ConfigError(ValueError):
  """A config file, variant or override that cannot be applied."""


def _import_config_module(path: str):
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} does not exist (expected a Python file with get_config()).")
  name = "_t2i_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path!r} defines no get_config().")
  return module


def _parse_value(key: str, text: str, current: Any) -> Any:
  """Parses `text` to the type of the field's current value."""
  if isinstance(current, str):
    return text
  if isinstance(current, bool):
    try:
      return parse_bool(text)
    except argparse.ArgumentTypeError:
      raise ConfigError(f"override {key}={text!r}: expected a boolean (true/false).") from None
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if current is None:
      return text
    raise ConfigError(f"override {key}={text!r}: cannot parse as {type(current).__name__}.") from None
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  if isinstance(current, (tuple, list)) and not isinstance(value, (tuple, list)):
    value = type(current)([value])
  return value


def _closest(config: ml_collections.ConfigDict, prefix: str, key: str) -> str:
  options = difflib.get_close_matches(key, list(config.keys()), n=3)
  hint = f" Did you mean {', '.join(prefix + o for o in options)}?" if options else ""
  return f"{prefix}{key}" + hint


def apply_override(config: ml_collections.ConfigDict, assignment: str) -> None:
  """Applies one `a.b.c=value` override in place; unknown keys fail naming the key."""
  if "=" not in assignment:
    raise ConfigError(f"override {assignment!r} must look like key.path=value.")
  key, text = assignment.split("=", 1)
  key = key.strip()
  if key.startswith("config."):
    key = key[len("config."):]
  parts = key.split(".")
  node, prefix = config, ""
  for part in parts[:-1]:
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise ConfigError(f"unknown config key {_closest(node, prefix, part)} in override {assignment!r}.")
    node, prefix = node[part], prefix + part + "."
  leaf = parts[-1]
  if leaf not in node:
    raise ConfigError(f"unknown config key {_closest(node, prefix, leaf)} in override {assignment!r}.")
  with node.unlocked() if not config.is_locked else _nullcontext():
    node[leaf] = _parse_value(key, text, node[leaf])


class _nullcontext:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads `path.py[:variant]`, applies `a.b=value` overrides, and returns the locked config."""
  path, _, variant = spec.partition(":")
  module = _import_config_module(path)
  config = module.get_config(variant) if variant else module.get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"get_config() of {path!r} returned {type(config).__name__}, not a ConfigDict.")
  config.lock()
  for assignment in overrides:
    apply_override(config, assignment)
  return config


def config_to_json(config: ml_collections.ConfigDict) -> str:
  """A stable JSON form of the config (saved beside checkpoints, compared on resume)."""
  return json.dumps(json.loads(config.to_json_best_effort()), sort_keys=True, indent=2)


# Sections shared by every experiment config (configs/*/*.py build on these).

def mesh_config(data: int = -1, fsdp: int = 1) -> ml_collections.ConfigDict:
  """Device mesh: axis sizes for `data` and `fsdp`; -1 fills with the remaining devices."""
  return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "min_fsdp_size": 2**18})


def distributed_config() -> ml_collections.ConfigDict:
  """Multi-host set-up. Empty coordinator: auto-detect (Cloud TPU pod, SLURM) or run single-process."""
  return ml_collections.ConfigDict({
      "coordinator_address": "",
      "num_processes": 0,
      "process_id": -1,
      "local_device_ids": "",
      "initialization_timeout": 300,
  })


def checkpoint_config(every_steps: int = 1000, keep: int = 3) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "every_steps": every_steps,
      "keep": keep,
      "async_save": True,
  })


def logging_config(every_steps: int = 50, images_every_steps: int = 1000) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "every_steps": every_steps,
      "images_every_steps": images_every_steps,
      "progress_bar": True,
  })


def experiment_config(*, data: ml_collections.ConfigDict, model: ml_collections.ConfigDict,
                      optimizer: ml_collections.ConfigDict, train: dict, checkpoint_every: int,
                      images_every: int, keep: int = 2, log_every: int = 50, seed: int = 0
                      ) -> ml_collections.ConfigDict:
  """The layout every experiment config has: seed, mesh, distributed, data, model, optimizer, train,
  checkpoint, logging (train gets `fast_compile: False` unless given; tiny variants turn it on)."""
  config = ml_collections.ConfigDict()
  config.seed = seed
  config.mesh = mesh_config()
  config.distributed = distributed_config()
  config.data = data
  config.model = model
  config.optimizer = optimizer
  config.train = ml_collections.ConfigDict({"fast_compile": False, **train})
  config.checkpoint = checkpoint_config(every_steps=checkpoint_every, keep=keep)
  config.logging = logging_config(every_steps=log_every, images_every_steps=images_every)
  return config
