"""CUB (AttnGAN captions/split) and COCO 2014 TFDS builders on tiny fake copies of the download layouts.

Checks that the ArrayRecord files are written and read back without TensorFlow, the caption rules (first
10 / 5 non-empty lines), the AttnGAN split files, class ids, the bounding-box crop, and the loader on top.
"""
import json
import os
import pickle
import sys

import numpy as np
import pytest
from PIL import Image

from t2i_common.data.config import data_config
from t2i_common.data.loader import iterate_eval, make_loader, make_source
from t2i_common.data.records import BadRecordError
from t2i_common.data.transforms import bbox_crop

# name: (class id, width, height, bbox x y w h); the last is the test image.
CUB_IMAGES = {
    "001.Black_footed_Albatross/Black_Footed_Albatross_0001_1": (1, 40, 30, (5.0, 4.0, 12.0, 10.0)),
    "001.Black_footed_Albatross/Black_Footed_Albatross_0002_2": (1, 32, 32, (20.0, 18.0, 11.0, 13.0)),
    "002.Laysan_Albatross/Laysan_Albatross_0003_3": (2, 36, 28, (0.0, 0.0, 36.0, 28.0)),
    "002.Laysan_Albatross/Laysan_Albatross_0004_4": (2, 30, 40, (10.9, 12.2, 8.0, 6.0)),
}


def _gradient_jpeg(path, width, height, seed):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
  Image.fromarray(image).save(path, quality=95)


def _fake_cub(root):
  cub = os.path.join(root, "CUB_200_2011")
  rows = []
  for i, (name, (class_id, width, height, box)) in enumerate(CUB_IMAGES.items(), 1):
    _gradient_jpeg(os.path.join(cub, "images", name + ".jpg"), width, height, i)
    rows.append((i, name, class_id, box))
    os.makedirs(os.path.join(root, "text", os.path.dirname(name)), exist_ok=True)
    lines = [f"bird {i} caption {j}" for j in range(12)]
    lines.insert(3, "")
    lines.insert(5, " ... ")  # no word: skipped, as AttnGAN skips lines without tokens
    with open(os.path.join(root, "text", name + ".txt"), "w") as f:
      f.write("\n".join(lines) + "\n")
  with open(os.path.join(cub, "images.txt"), "w") as f:
    f.writelines(f"{i} {name}.jpg\n" for i, name, _, _ in rows)
  with open(os.path.join(cub, "bounding_boxes.txt"), "w") as f:
    f.writelines(f"{i} {' '.join(str(v) for v in box)}\n" for i, _, _, box in rows)
  with open(os.path.join(cub, "image_class_labels.txt"), "w") as f:
    f.writelines(f"{i} {c}\n" for i, _, c, _ in rows)
  names = list(CUB_IMAGES)
  for split, part in (("train", names[:3]), ("test", names[3:])):
    os.makedirs(os.path.join(root, split))
    with open(os.path.join(root, split, "filenames.pickle"), "wb") as f:
      pickle.dump(part, f, protocol=2)
  return root


def _fake_coco(root):
  ids = {"train2014": [9, 25, 30], "val2014": [42, 73]}
  for year, image_ids in ids.items():
    images, annotations = [], []
    for k, image_id in enumerate(image_ids):
      name = f"COCO_{year}_{image_id:012d}.jpg"
      _gradient_jpeg(os.path.join(root, year, name), 24 + 4 * k, 20, image_id)
      images.append({"id": image_id, "file_name": name, "width": 24 + 4 * k, "height": 20})
      for j in range(7 if k == 0 else 5):
        annotations.append({"id": 1000 * image_id + j, "image_id": image_id,
                            "caption": "   " if j == 1 else f"photo {image_id} caption {j}"})
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    with open(os.path.join(root, "annotations", f"captions_{year}.json"), "w") as f:
      json.dump({"images": images[::-1], "annotations": annotations}, f)
  return root


@pytest.fixture(scope="module")
def cub_config(tmp_path_factory):
  root = tmp_path_factory.mktemp("cub")
  config = data_config("cub", data_dir=str(root / "tfds"), image_sizes=(16, 32))
  config.cub.manual_dir = _fake_cub(str(root / "birds"))
  return config


@pytest.fixture(scope="module")
def coco_config(tmp_path_factory):
  root = tmp_path_factory.mktemp("coco")
  config = data_config("coco", data_dir=str(root / "tfds"), image_sizes=(16,))
  config.coco.manual_dir = _fake_coco(str(root / "coco2014"))
  return config


def test_cub_builder_records_split_captions_and_crop(cub_config):
  loaded = set(sys.modules)
  train, test = make_source(cub_config, "train"), make_source(cub_config, "test")
  # Reading imports no TensorFlow (another test of the session may have imported it for its own reference).
  assert "tensorflow" not in set(sys.modules) - loaded
  files = os.listdir(os.path.join(cub_config.data_dir, "cub_attngan", "1.0.0"))
  assert any(".array_record" in f for f in files)
  assert (len(train), len(test)) == (3, 1)
  records = {r["key"]: r for r in (train[i] for i in range(3))}
  assert set(records) == set(list(CUB_IMAGES)[:3]) and test[0]["key"] == list(CUB_IMAGES)[3]
  for key, record in list(records.items()) + [(test[0]["key"], test[0])]:
    class_id, width, height, box = CUB_IMAGES[key]
    assert record["class_id"] == class_id
    expected = [f"bird {list(CUB_IMAGES).index(key) + 1} caption {j}" for j in range(10)]
    assert record["captions"] == expected
    original = np.asarray(Image.open(os.path.join(cub_config.cub.manual_dir, "CUB_200_2011", "images",
                                                  key + ".jpg")).convert("RGB"))
    np.testing.assert_array_equal(record["image"], bbox_crop(original, box))
  # By hand for box (5, 4, 12, 10) in a 40x30 image: r = int(0.75 * 12) = 9 either side of the centre
  # (11, 9), clipped at the top edge: rows 0..18, columns 2..20.
  first = list(CUB_IMAGES)[0]
  original = np.asarray(Image.open(os.path.join(cub_config.cub.manual_dir, "CUB_200_2011", "images",
                                                first + ".jpg")).convert("RGB"))
  np.testing.assert_array_equal(records[first]["image"], original[0:18, 2:20])
  cub_config.cub.bbox_crop = False
  try:
    assert make_source(cub_config, "test")[0]["image"].shape == (40, 30, 3)
  finally:
    cub_config.cub.bbox_crop = True


def test_cub_loader_pyramid_and_eval(cub_config):
  loader = make_loader(cub_config, "train", global_batch_size=2, seed=0, process_index=0, process_count=1)
  batch = next(loader)
  assert batch["image_16"].shape == (2, 16, 16, 3) and batch["image_32"].shape == (2, 32, 32, 3)
  assert batch["image_32"].min() >= -1 and batch["image_32"].max() <= 1
  assert set(batch["class_id"].tolist()) <= {1, 2}
  evaluation = list(iterate_eval(cub_config, "train", 2, process_index=0, process_count=1))
  assert [b["mask"].tolist() for b in evaluation] == [[True, True], [True, False]]


def test_cub_missing_files_explain_layout(tmp_path):
  config = data_config("cub", data_dir=str(tmp_path / "tfds"))
  config.cub.manual_dir = str(tmp_path / "birds")
  with pytest.raises(FileNotFoundError, match=r"manual_dir=.*birds.*does not exist"):
    make_source(config, "train")
  os.makedirs(os.path.join(config.cub.manual_dir, "text"))
  with pytest.raises(FileNotFoundError, match=r"(?s)images\.txt.*Put in the manual directory.*CUB_200_2011/"):
    make_source(config, "train")
  config.cub.prepare = False
  with pytest.raises(FileNotFoundError, match="python -m t2i_common.data.cub"):
    make_source(config, "train")


def test_coco_builder_first_five_captions_and_splits(coco_config):
  loaded = set(sys.modules)
  train, test = make_source(coco_config, "train"), make_source(coco_config, "test")
  # Reading imports no TensorFlow (another test of the session may have imported it for its own reference).
  assert "tensorflow" not in set(sys.modules) - loaded
  assert (len(train), len(test)) == (3, 2)
  records = {r["class_id"]: r for r in (train[i] for i in range(3))}
  assert set(records) == {9, 25, 30} and {test[i]["class_id"] for i in range(2)} == {42, 73}
  assert records[9]["captions"] == [f"photo 9 caption {j}" for j in (0, 2, 3, 4, 5)]
  assert records[25]["captions"] == [f"photo 25 caption {j}" for j in (0, 2, 3, 4)]
  assert records[25]["key"] == "train2014/COCO_train2014_000000000025.jpg"
  assert records[25]["image"].shape == (20, 28, 3)
  with pytest.raises(ValueError, match="no split 'validation'"):
    make_source(coco_config, "validation")
  batch = next(make_loader(coco_config, "test", global_batch_size=2, seed=1, process_index=0, process_count=1))
  assert batch["image"].shape == (2, 16, 16, 3)


def test_coco_corrupt_image_is_a_bad_record(tmp_path):
  root = _fake_coco(str(tmp_path / "coco2014"))
  with open(os.path.join(root, "val2014", "COCO_val2014_000000000073.jpg"), "wb") as f:
    f.write(b"\xff\xd8 broken")
  config = data_config("coco", data_dir=str(tmp_path / "tfds"), image_sizes=(16,))
  config.coco.manual_dir = root
  source = make_source(config, "test")
  keys = [source._source[i]["key"].decode() for i in range(2)]
  with pytest.raises(BadRecordError, match=r"COCO_val2014_000000000073\.jpg.*unreadable image"):
    source[keys.index("val2014/COCO_val2014_000000000073.jpg")]
  config.on_bad_record = "skip"
  loader = make_loader(config, "test", global_batch_size=1, seed=0, num_epochs=1, process_index=0,
                       process_count=1)
  assert [int(b["class_id"][0]) for b in loader] == [42] and loader.num_skipped == 1
