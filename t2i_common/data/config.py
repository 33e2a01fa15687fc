"""The `config.data` section every experiment config holds, and its validation.

`data_config("cub", image_sizes=(64, 128, 256))` gives the AttnGAN birds input; `data_config("shapes")` the
synthetic shapes used by tests and demos. Defaults follow AttnGAN's train transform (resize to
int(max_size * 76 / 64), random crop, random flip) except for shapes, whose captions and oracle boxes would be
broken by cropping and mirroring.
"""
from __future__ import annotations

from typing import Any

import ml_collections

NAMES = ("shapes", "folder", "cub", "coco")
BAD_RECORD_MODES = ("error", "skip")


def folder_config() -> ml_collections.ConfigDict:
  """Options of the `folder` source (a directory of images with captions; see t2i_common/data/folder.py)."""
  return ml_collections.ConfigDict({
      # JSONL file (relative to the split root) with {"file_name", "text"|"captions"}; "" looks for
      # captions.jsonl then metadata.jsonl, and falls back to sidecar <image stem>.txt files.
      "captions_file": "",
      # Share of images that go to "test" when the folder has no train/ and test/ subfolders. The split is a
      # hash of each file's relative path, so it does not change when files are added or listed differently.
      "test_fraction": 0.1,
      # Keep at most this many captions per image (0: all), first non-empty lines first, as AttnGAN does.
      "max_captions": 0,
  })


def tfds_source_config(**extra: Any) -> ml_collections.ConfigDict:
  """Options of the TFDS-built sources (cub, coco); cub adds bbox_crop (AttnGAN's box crop when loading)."""
  return ml_collections.ConfigDict({
      **extra,
      # Directory holding the manually downloaded files; "" means <data_dir>/downloads/manual.
      "manual_dir": "",
      # Build the ArrayRecord files on first use (single-process runs only; multi-host runs build first with
      # `python -m t2i_common.data.cub` / `... .coco`).
      "prepare": True,
  })


def _shapes_config() -> ml_collections.ConfigDict:
  # Imported here so that this module loads even where only the file-backed sources are wanted.
  from t2i_common.data.shapes import shapes_config
  return shapes_config()


def data_config(name: str = "shapes", **overrides: Any) -> ml_collections.ConfigDict:
  """Returns the data section for source `name`; keyword arguments replace top-level fields.

  Fields:
    name: "shapes" | "folder" | "cub" | "coco".
    data_dir: folder root (folder), TFDS data directory (cub, coco; "" = ~/tensorflow_datasets); unused by shapes.
    image_sizes: output sizes, ascending; one size gives batch["image"], several give batch["image_<size>"].
    random_crop / random_flip / crop_ratio: train augmentation (resize the shorter side to
      int(max_size * crop_ratio), take a random max_size crop, mirror with probability 1/2).
    on_bad_record: "error" stops naming the record; "skip" drops it and counts it (loader.num_skipped).
    num_workers: grain worker processes (0: load in the main process with threads).
    read_threads / prefetch_buffer / worker_buffer_size: grain read threads and buffers per process.
  """
  if name not in NAMES:
    raise ValueError(f"unknown dataset name {name!r}; expected one of {', '.join(NAMES)}.")
  augment = name != "shapes"
  config = ml_collections.ConfigDict({
      "name": name,
      "data_dir": "",
      "image_sizes": (64,),
      "random_crop": augment,
      "random_flip": augment,
      "crop_ratio": 76 / 64,
      "on_bad_record": "error",
      "num_workers": 0,
      "read_threads": 4,
      "prefetch_buffer": 64,
      "worker_buffer_size": 2,
      "shapes": _shapes_config(),
      "folder": folder_config(),
      "cub": tfds_source_config(bbox_crop=True),
      "coco": tfds_source_config(),
  })
  for key, value in overrides.items():
    if key not in config:
      raise ValueError(f"data_config() has no field {key!r}; fields: {', '.join(sorted(config.keys()))}.")
    if isinstance(config[key], tuple) and isinstance(value, list):
      value = tuple(value)
    config[key] = value
  validate_data_config(config)
  return config


def validate_data_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field when the data section cannot work."""
  if config.name not in NAMES:
    raise ValueError(f"config.data.name={config.name!r}; expected one of {', '.join(NAMES)}.")
  sizes = tuple(config.image_sizes)
  if not sizes or any(not isinstance(s, int) or s <= 0 for s in sizes):
    raise ValueError(f"config.data.image_sizes={sizes!r} must be a non-empty tuple of positive ints.")
  if list(sizes) != sorted(set(sizes)):
    raise ValueError(f"config.data.image_sizes={sizes!r} must be strictly ascending, e.g. (64, 128, 256).")
  if config.crop_ratio < 1.0:
    raise ValueError(f"config.data.crop_ratio={config.crop_ratio} must be >= 1 (AttnGAN uses 76/64).")
  if config.on_bad_record not in BAD_RECORD_MODES:
    raise ValueError(f"config.data.on_bad_record={config.on_bad_record!r}; expected 'error' or 'skip'.")
  for key in ("num_workers", "read_threads", "prefetch_buffer", "worker_buffer_size"):
    if config[key] < 0:
      raise ValueError(f"config.data.{key}={config[key]} must be >= 0.")
  if config.name == "folder":
    if not config.data_dir:
      raise ValueError("config.data.data_dir must name the image folder for the 'folder' dataset.")
    if not 0.0 <= config.folder.test_fraction < 1.0:
      raise ValueError(f"config.data.folder.test_fraction={config.folder.test_fraction} must be in [0, 1).")
