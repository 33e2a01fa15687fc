"""MS-COCO 2014 captions: a TFDS builder over the manually downloaded annotations and images.

Build once (single process), then every run reads the ArrayRecord files without TensorFlow:
  python -m t2i_common.data.coco --manual_dir data/coco2014 --data_dir ~/tensorflow_datasets
Splits follow AttnGAN: "train" = train2014 (82,783 images), "test" = val2014 (40,504). Each image keeps its
first 5 non-empty captions in annotation-file order; every image is its own class (class id = COCO image id),
as AttnGAN does for COCO. Images are stored as the original JPEG bytes.
"""
from __future__ import annotations

import collections
import json
import os
from typing import Any

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from t2i_common.data.records import (TfdsSource, decode_image, open_tfds_builder, prepare_main, record_features,
                                     require_paths, select_captions, text)

CAPTIONS_PER_IMAGE = 5
SPLIT_YEARS = {"train": "train2014", "test": "val2014"}


class CocoAttngan(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """COCO 2014 captions with AttnGAN's 5-caption rule and train2014 / val2014 split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Original JPEG bytes, first 5 captions, train2014 / val2014."}
  # Manual download, so no checksums file; TFDS's lookup of one would import the undeclared importlib_resources.
  _checksums_path = None
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Put in the manual directory (from https://cocodataset.org/#download):
    annotations/captions_train2014.json, annotations/captions_val2014.json   (annotations_trainval2014.zip)
    train2014/COCO_train2014_*.jpg                                          (train2014.zip)
    val2014/COCO_val2014_*.jpg                                              (val2014.zip)
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="MS-COCO 2014 images with 5 captions each; train2014 for training, val2014 as test.",
        features=record_features(image_id=np.int64),
        homepage="https://cocodataset.org/",
        citation="Lin et al., Microsoft COCO: Common Objects in Context, 2014; Xu et al., AttnGAN, CVPR 2018.",
    )

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    needed = [os.path.join(root, "annotations", f"captions_{y}.json") for y in SPLIT_YEARS.values()]
    needed_dirs = [os.path.join(root, y) for y in SPLIT_YEARS.values()]
    require_paths("COCO", root, needed, needed_dirs, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    return {split: self._generate_examples(root, year) for split, year in SPLIT_YEARS.items()}

  def _generate_examples(self, root: str, year: str):
    path = os.path.join(root, "annotations", f"captions_{year}.json")
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
      raise ValueError(f"{path} is not a COCO captions file (needs 'images' and 'annotations').")
    captions = collections.defaultdict(list)
    for annotation in data["annotations"]:
      captions[annotation["image_id"]].append(annotation["caption"])
    for image in sorted(data["images"], key=lambda im: im["file_name"]):
      image_path = os.path.join(root, year, image["file_name"])
      if not os.path.isfile(image_path):
        raise FileNotFoundError(f"COCO image {image_path} listed in {path} is missing.\n"
                                + self.MANUAL_DOWNLOAD_INSTRUCTIONS)
      with open(image_path, "rb") as f:
        encoded = f.read()
      key = f"{year}/{image['file_name']}"
      # Images without captions are stored as they are: the loader reports or skips them (on_bad_record).
      yield key, {"image": encoded, "captions": select_captions(captions[image["id"]], CAPTIONS_PER_IMAGE),
                  "class_id": int(image["id"]), "image_id": int(image["id"]), "key": key}


def to_record(raw: dict[str, Any], dataset: str) -> dict[str, Any]:
  """Raw TFDS row -> loader record."""
  key = text(raw["key"])
  image = decode_image(raw["image"], dataset=dataset, key=key, path=key)
  return {"image": image, "captions": [text(c) for c in raw["captions"]], "class_id": int(raw["class_id"]),
          "key": key}


def make_coco_source(data_config: ml_collections.ConfigDict, split: str) -> TfdsSource:
  options = data_config.coco
  builder = open_tfds_builder(CocoAttngan, data_config.data_dir, options.manual_dir, options.prepare)
  return TfdsSource(builder, split, to_record)


if __name__ == "__main__":
  # The package module's class, so messages name `t2i_common.data.coco` rather than `__main__`.
  from t2i_common.data import coco
  prepare_main(coco.CocoAttngan)
