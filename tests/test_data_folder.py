"""The `folder` source (sidecar .txt and JSONL captions, split rules) and bad-record handling in the loader."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from t2i_common.data.config import data_config
from t2i_common.data.folder import FolderSource
from t2i_common.data.loader import iterate_eval, make_loader
from t2i_common.data.records import BadRecordError


def _image(path, value, size=(20, 16)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  array = np.full((size[1], size[0], 3), value, np.uint8)
  array[0, 0] = (255 - value, 0, 0)
  Image.fromarray(array).save(path)


def _sidecar_folder(root, n=12, classes=("birds", "cats")):
  """n images over class subfolders, each with a .txt of captions (blank lines included)."""
  for i in range(n):
    base = os.path.join(root, classes[i % len(classes)], f"img{i:02d}")
    _image(base + ".png", 10 * i)
    with open(base + ".txt", "w") as f:
      f.write(f"\ncaption {i} a\n\n  caption {i} b  \n")
  return root


def _loader_config(root, **kw):
  config = data_config("folder", data_dir=str(root), image_sizes=(16,), **kw)
  config.folder.test_fraction = 0.0
  return config


def test_sidecar_captions_classes_and_hash_split(tmp_path):
  root = _sidecar_folder(str(tmp_path / "data"))
  train = FolderSource(root, "train", test_fraction=0.3)
  test = FolderSource(root, "test", test_fraction=0.3)
  keys = {train[i]["key"].split("/", 1)[1] for i in range(len(train))}
  test_keys = {test[i]["key"].split("/", 1)[1] for i in range(len(test))}
  assert not keys & test_keys and len(keys | test_keys) == 12 and test_keys
  again = FolderSource(root, "test", test_fraction=0.3)
  assert [again[i]["key"] for i in range(len(again))] == [test[i]["key"] for i in range(len(test))]
  record = train[0]
  assert record["image"].shape == (16, 20, 3) and record["image"].dtype == np.uint8
  assert record["captions"][1] == record["captions"][0][:-1] + "b"  # blank lines dropped, text stripped
  # Class ids follow the class folders, identically in both splits.
  classes = {train[i]["key"].split("/")[1]: train[i]["class_id"] for i in range(len(train))}
  classes.update({test[i]["key"].split("/")[1]: test[i]["class_id"] for i in range(len(test))})
  assert classes == {"birds": 0, "cats": 1}
  limited = FolderSource(root, "train", test_fraction=0.3, max_captions=1)
  assert len(limited[0]["captions"]) == 1


def test_jsonl_captions_and_split_subfolders(tmp_path):
  root = tmp_path / "data"
  for split, n in (("train", 3), ("test", 2)):
    lines = []
    for i in range(n):
      _image(str(root / split / f"{i}.jpg"), 30 * i)
      lines.append({"file_name": f"{i}.jpg", "text": f"{split} picture {i}"})
    lines.append({"file_name": "0.jpg", "captions": ["another one", ""], "class_id": 7})
    (root / split / "captions.jsonl").write_text("\n".join(json.dumps(l) for l in lines) + "\n")
  train, test = FolderSource(str(root), "train"), FolderSource(str(root), "test")
  assert (len(train), len(test)) == (3, 2)
  assert train[0]["captions"] == ["train picture 0", "another one"] and train[0]["class_id"] == 7
  assert train[2]["class_id"] == 2 and test[1]["captions"] == ["test picture 1"]
  (root / "train" / "captions.jsonl").write_text('{"file_name": "0.jpg"}\nnot json\n')
  with pytest.raises(ValueError, match=r"captions.jsonl:2: not valid JSON"):
    FolderSource(str(root), "train")


def test_empty_split_and_missing_dir_fail_clearly(tmp_path):
  root = _sidecar_folder(str(tmp_path / "data"), n=2)
  with pytest.raises(ValueError, match="test_fraction"):
    FolderSource(root, "test", test_fraction=0.0)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    FolderSource(str(tmp_path / "nowhere"), "train")


@pytest.fixture
def bad_folder(tmp_path):
  """10 good images, one truncated JPEG and one image whose caption file holds only blank lines."""
  root = _sidecar_folder(str(tmp_path / "data"), n=10, classes=("a",))
  # A real JPEG cut short: the header reads fine, the pixel data does not.
  noise = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
  Image.fromarray(noise).save(os.path.join(root, "a", "corrupt.jpg"), quality=95)
  with open(os.path.join(root, "a", "corrupt.jpg"), "rb+") as f:
    f.truncate(os.path.getsize(os.path.join(root, "a", "corrupt.jpg")) // 2)
  with open(os.path.join(root, "a", "corrupt.txt"), "w") as f:
    f.write("a caption for a broken image\n")
  _image(os.path.join(root, "a", "silent.png"), 99)
  with open(os.path.join(root, "a", "silent.txt"), "w") as f:
    f.write("\n \n\n")
  return root


def test_bad_records_stop_with_file_name(bad_folder):
  config = _loader_config(bad_folder)
  loader = make_loader(config, "train", global_batch_size=12, seed=0, num_epochs=1, drop_remainder=False,
                       process_index=0, process_count=1)
  with pytest.raises(BadRecordError, match=r"(corrupt\.jpg|silent\.txt).*on_bad_record='skip'"):
    next(loader)
  source = FolderSource(bad_folder, "train", test_fraction=0.0)
  names = [source._files[i] for i in range(len(source))]
  with pytest.raises(BadRecordError, match=r"corrupt\.jpg.*unreadable image"):
    source[names.index("a/corrupt.jpg")]
  with pytest.raises(BadRecordError, match=r"silent\.txt.*no non-empty line"):
    source[names.index("a/silent.png")]


def test_bad_records_skipped_and_counted(bad_folder):
  config = _loader_config(bad_folder, on_bad_record="skip")
  loader = make_loader(config, "train", global_batch_size=4, seed=3, num_epochs=2, drop_remainder=False,
                       process_index=0, process_count=1)
  batches = list(loader)
  seen = np.concatenate([b["index"] for b in batches])
  assert len(seen) == 20 and loader.num_skipped == 4  # 2 bad records x 2 epochs, none trained on
  assert all(len(b["index"]) <= 4 for b in batches)
  source = FolderSource(bad_folder, "train", test_fraction=0.0)
  bad = {source._files.index("a/corrupt.jpg"), source._files.index("a/silent.png")}
  assert not bad & set(seen.tolist())
  # Evaluation replaces a bad record by a masked-out good one and counts it.
  evaluation = iterate_eval(config, "train", 8, process_index=0, process_count=1)
  batches = list(evaluation)
  assert len(batches) == 2 and evaluation.num_skipped == 2
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == 10 and not bad & set(np.concatenate([b["index"] for b in batches]).tolist())
