"""Data: sources (shapes, folder, cub, coco), the grain loader and the evaluation pass.

  from t2i_common.data import data_config, make_loader, iterate_eval
  config = data_config("cub", data_dir="~/tensorflow_datasets", image_sizes=(64, 128, 256))
  loader = make_loader(config, "train", global_batch_size=20, seed=0, text_transform=tokenize)

Modules: config (config.data fields), loader (make_source / make_loader / iterate_eval), transforms (AttnGAN
crop and pyramid), records (record checks, bad-record errors, TFDS reading), folder / cub / coco / shapes
(sources), preview (grid + JSONL of what the loader yields).
"""
import importlib

# Loaded on first use, so `import t2i_common.data.shapes` (oracle, renderer) does not pay for grain and jax.
_EXPORTS = {
    "data_config": "t2i_common.data.config",
    "make_source": "t2i_common.data.loader",
    "make_loader": "t2i_common.data.loader",
    "iterate_eval": "t2i_common.data.loader",
    "DataIterator": "t2i_common.data.loader",
    "BadRecordError": "t2i_common.data.records",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 't2i_common.data' has no attribute {name!r}")
