"""Look at what the loader feeds a model: an image grid with captions and a JSONL of the examples.

  python -m t2i_common.data.preview --dataset shapes --num 16 --resolution 64 --out /tmp/preview
  python -m t2i_common.data.preview --dataset folder --data_dir my_images --split test --out /tmp/preview
  python -m t2i_common.data.preview --dataset cub --data_dir ~/tensorflow_datasets --manual_dir data/birds ...

Writes OUT/grid.png and OUT/examples.jsonl, one line per example {"image": PNG beside it, "caption", "key",
"index", "class_id"} plus, for shapes, the ground-truth "objects" (readable by t2i_common.data.shapes_oracle).
By default the first --num examples of the split, unaugmented (the evaluation pass); --augment shows shuffled
training batches with the configured random crop and flip instead.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Sequence

import numpy as np
from PIL import Image

from t2i_common.cli_args import positive_int
from t2i_common.config import apply_override
from t2i_common.data.config import NAMES, data_config
from t2i_common.data.loader import iterate_eval, make_loader, make_source
from t2i_common.logging import CAPTIONED_MIN_SIDE, save_image_grid

SINGLE_PROCESS = {"process_index": 0, "process_count": 1}


def _objects(record: dict, keep_boxes: bool) -> list[dict]:
  """Ground-truth objects as JSON; boxes are dropped when augmentation moved the pixels."""
  out = []
  for obj in record["objects"]:
    obj = {k: (np.asarray(v).tolist() if isinstance(v, (np.ndarray, tuple)) else v) for k, v in obj.items()}
    if not keep_boxes:
      obj.pop("bbox", None)
    out.append(obj)
  return out


def write_preview(config, split: str, num: int, out_dir: str, *, augment: bool = False, seed: int = 0) -> str:
  """Writes grid.png and examples.jsonl for the first `num` examples; returns the JSONL path."""
  if augment:
    batch = next(make_loader(config, split, global_batch_size=num, seed=seed, drop_remainder=False,
                             **SINGLE_PROCESS))
  else:
    batch = next(iter(iterate_eval(config, split, num, seed=seed, **SINGLE_PROCESS)))
    batch = {k: v[batch["mask"]] for k, v in batch.items()}
  key = "image" if "image" in batch else f"image_{config.image_sizes[-1]}"
  images = np.round((batch[key] + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
  source = make_source(config, split) if config.name == "shapes" else None
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, "examples.jsonl")
  with open(path, "w", encoding="utf-8") as f:
    for i, image in enumerate(images):
      name = f"{i:06d}.png"
      Image.fromarray(image).save(os.path.join(out_dir, name))
      index = int(batch["index"][i])
      line = {"image": name, "caption": str(batch["caption"][i]), "index": index,
              "class_id": int(batch["class_id"][i])}
      if source is not None:
        record = source[index]
        line["key"] = record["key"]
        line["objects"] = _objects(record, keep_boxes=not (config.random_crop or config.random_flip))
      f.write(json.dumps(line) + "\n")
  save_image_grid(images, os.path.join(out_dir, "grid.png"), captions=[str(c) for c in batch["caption"]],
                  min_side=CAPTIONED_MIN_SIDE)
  return path


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", required=True, choices=NAMES)
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--num", type=positive_int, default=16, help="number of examples")
  parser.add_argument("--resolution", type=int, default=64, help="image size")
  parser.add_argument("--split", default="train", help="train or test")
  parser.add_argument("--data_dir", default="", help="folder root (folder) or TFDS data dir (cub, coco)")
  parser.add_argument("--manual_dir", default="", help="cub/coco: the manually downloaded files")
  parser.add_argument("--augment", action="store_true", help="show shuffled, augmented training examples")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="data config override, e.g. --set folder.test_fraction=0.2 (repeatable)")
  args = parser.parse_args(argv)
  config = data_config(args.dataset, image_sizes=(args.resolution,), data_dir=args.data_dir)
  if args.manual_dir:
    if args.dataset not in ("cub", "coco"):
      parser.error("--manual_dir applies to cub and coco only")
    config[args.dataset].manual_dir = args.manual_dir
  if not args.augment:
    config.random_crop = config.random_flip = False
  for assignment in args.set:
    apply_override(config, assignment)
  path = write_preview(config, args.split, args.num, args.out, augment=args.augment, seed=args.seed)
  print(f"wrote {os.path.join(args.out, 'grid.png')} and {path}")
  return path


if __name__ == "__main__":
  main()
