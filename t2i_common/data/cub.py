"""CUB-200-2011 birds with the AttnGAN captions: a TFDS builder over the manually downloaded files.

Build once (single process), then every run reads the ArrayRecord files without TensorFlow:
  python -m t2i_common.data.cub --manual_dir data/birds --data_dir ~/tensorflow_datasets
Splits follow AttnGAN: train/filenames.pickle (8,855 images) and test/filenames.pickle (2,933). Each image
keeps its first 10 non-empty caption lines; the class id is CUB's (1..200, image_class_labels.txt, which is
also the number of the class folder). Images are stored as the original JPEG bytes with their bounding box;
AttnGAN's box crop is applied when loading (config.data.cub.bbox_crop), so one build serves both uses.
"""
from __future__ import annotations

import functools
import os
import pickle
from typing import Any

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from t2i_common.data.records import (BadRecordError, TfdsSource, decode_image, open_tfds_builder, prepare_main,
                                     record_features, require_paths, select_captions, text)
from t2i_common.data.transforms import bbox_crop

CAPTIONS_PER_IMAGE = 10


def _read_table(path: str, columns: int) -> dict[int, list[str]]:
  """Reads a CUB metadata file of lines `<image id> <value> ...` into {id: [values]}."""
  table = {}
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      parts = line.split()
      if not parts:
        continue
      if len(parts) != columns + 1:
        raise ValueError(f"{path}:{line_no}: expected an image id and {columns} values, got {line.strip()!r}.")
      table[int(parts[0])] = parts[1:]
  return table


def read_filenames(path: str) -> list[str]:
  """AttnGAN's filenames.pickle (a Python 2 pickle of '<class folder>/<image stem>' strings)."""
  with open(path, "rb") as f:
    names = pickle.load(f, encoding="latin1")
  return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


class CubAttngan(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """CUB-200-2011 with AttnGAN's captions and train/test split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Original JPEG bytes, bounding box, 10 captions, AttnGAN split."}
  # Manual download, so no checksums file; TFDS's lookup of one would import the undeclared importlib_resources.
  _checksums_path = None
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Put in the manual directory (AttnGAN's data/birds layout):
    CUB_200_2011/                 from CUB_200_2011.tgz (https://www.vision.caltech.edu/datasets/cub_200_2011/):
      images.txt, bounding_boxes.txt, image_class_labels.txt, images/<class>/<image>.jpg
    text/<class>/<image>.txt      the AttnGAN / Reed et al. captions (AttnGAN's birds.zip, text_c10)
    train/filenames.pickle        AttnGAN's split (birds.zip)
    test/filenames.pickle
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="CUB-200-2011 birds with 10 captions per image, split as in AttnGAN.",
        # bbox: x, y, width, height in pixels, as in bounding_boxes.txt.
        features=record_features(bbox=tfds.features.Tensor(shape=(4,), dtype=np.float32)),
        homepage="https://www.vision.caltech.edu/datasets/cub_200_2011/",
        citation="Wah et al., The Caltech-UCSD Birds-200-2011 Dataset, 2011; Xu et al., AttnGAN, CVPR 2018.",
    )

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    cub = os.path.join(root, "CUB_200_2011")
    needed = [os.path.join(cub, n) for n in ("images.txt", "bounding_boxes.txt", "image_class_labels.txt")]
    needed += [os.path.join(root, s, "filenames.pickle") for s in ("train", "test")]
    require_paths("CUB", root, needed, [], self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    images = {i: v[0] for i, v in _read_table(needed[0], 1).items()}
    boxes = _read_table(needed[1], 4)
    labels = _read_table(needed[2], 1)
    by_stem = {}
    for image_id, rel in images.items():
      if image_id not in boxes or image_id not in labels:
        raise ValueError(f"CUB image id {image_id} ({rel}) has no bounding box or class label.")
      by_stem[os.path.splitext(rel)[0]] = (rel, [float(v) for v in boxes[image_id]], int(labels[image_id][0]))
    return {
        split: self._generate_examples(root, read_filenames(needed[3 + i]), by_stem, split)
        for i, split in enumerate(("train", "test"))
    }

  def _generate_examples(self, root: str, names: list[str], by_stem: dict, split: str):
    for name in names:
      if name not in by_stem:
        raise ValueError(f"{split}/filenames.pickle names {name!r}, which CUB_200_2011/images.txt lacks.")
      rel, box, class_id = by_stem[name]
      folder_class = name.split("/")[0].split(".")[0]
      if folder_class.isdigit() and int(folder_class) != class_id:
        raise ValueError(f"CUB image {name!r}: image_class_labels.txt says class {class_id}, its folder says "
                         f"{int(folder_class)}.")
      image_path = os.path.join(root, "CUB_200_2011", "images", rel)
      caption_path = os.path.join(root, "text", name + ".txt")
      for path in (image_path, caption_path):
        if not os.path.isfile(path):
          raise FileNotFoundError(f"CUB record {name!r}: {path} is missing.\n" + self.MANUAL_DOWNLOAD_INSTRUCTIONS)
      with open(image_path, "rb") as f:
        image = f.read()
      with open(caption_path, encoding="utf-8", errors="replace") as f:
        # Empty caption lists are stored as they are: the loader reports or skips them (on_bad_record).
        captions = select_captions(f.read().splitlines(), CAPTIONS_PER_IMAGE)
      yield name, {"image": image, "bbox": np.asarray(box, np.float32), "captions": captions,
                   "class_id": class_id, "key": name}


def to_record(raw: dict[str, Any], dataset: str, *, crop: bool = True) -> dict[str, Any]:
  """Raw TFDS row -> loader record (decoded image, optionally cropped to AttnGAN's box)."""
  key = text(raw["key"])
  path = f"CUB_200_2011/images/{key}.jpg"
  image = decode_image(raw["image"], dataset=dataset, key=key, path=path)
  if crop:
    try:
      image = bbox_crop(image, raw["bbox"])
    except ValueError as e:
      raise BadRecordError(dataset, key, str(e), path) from None
  return {"image": image, "captions": [text(c) for c in raw["captions"]], "class_id": int(raw["class_id"]),
          "key": key}


def make_cub_source(data_config: ml_collections.ConfigDict, split: str) -> TfdsSource:
  options = data_config.cub
  builder = open_tfds_builder(CubAttngan, data_config.data_dir, options.manual_dir, options.prepare)
  return TfdsSource(builder, split, functools.partial(to_record, crop=options.bbox_crop))


if __name__ == "__main__":
  # The package module's class, so messages name `t2i_common.data.cub` rather than `__main__`.
  from t2i_common.data import cub
  prepare_main(cub.CubAttngan)
