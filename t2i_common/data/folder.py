"""`folder` source: a directory of the user's own images with captions.

Layouts (data_dir is the root):
  root/[train/, test/]             optional split subfolders; without them the split is a hash of each image's
                                   relative path against folder.test_fraction (stable as files are added)
  <split root>/captions.jsonl      (or metadata.jsonl, or folder.captions_file) lines
                                   {"file_name": "a/b.jpg", "text": "..." | ["...", ...]} or "captions": [...];
                                   several lines for one file add captions; optional "class_id": int
  <split root>/**/img.jpg + img.txt  otherwise: sidecar caption files, one caption per line
Class ids: "class_id" from the JSONL, else the index of the image's top-level subfolder (class folders), else
one id per image (as AttnGAN does for COCO). Images and captions are read lazily; an unreadable image, a
missing caption file or an empty caption raises BadRecordError naming the file.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import ml_collections

from t2i_common.data.records import (BadRecordError, decode_image, iter_jsonl, read_caption_file,
                                     select_captions)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
DEFAULT_CAPTION_FILES = ("captions.jsonl", "metadata.jsonl")
SPLITS = ("train", "test")


def _in_test_split(rel_path: str, test_fraction: float) -> bool:
  # A content-free hash of the path: deterministic across machines and listing orders.
  digest = hashlib.sha1(rel_path.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64 < test_fraction


def _list_images(root: str) -> list[str]:
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for name in filenames:
      if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
        found.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
  return sorted(found)


def _read_jsonl(path: str) -> tuple[list[str], dict[str, list[str]], dict[str, int]]:
  """Returns (file names in first-seen order, captions per file, class ids per file) from a JSONL file."""
  order, captions, class_ids = [], {}, {}
  for line_no, entry in iter_jsonl(path):
    if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str):
      raise ValueError(f"{path}:{line_no}: each line needs a \"file_name\" string, got {json.dumps(entry)[:100]}.")
    name = entry["file_name"].replace(os.sep, "/")
    text = entry.get("captions", entry.get("text", []))
    if isinstance(text, str):
      text = [text]
    if not isinstance(text, list) or not all(isinstance(t, str) for t in text):
      raise ValueError(f"{path}:{line_no}: \"text\"/\"captions\" must be a string or a list of strings.")
    if name not in captions:
      order.append(name)
      captions[name] = []
    captions[name].extend(text)
    if "class_id" in entry:
      class_ids[name] = int(entry["class_id"])
  return order, captions, class_ids


class FolderSource:
  """Random-access source over an image folder (see the module docstring for the layouts)."""

  def __init__(self, data_dir: str, split: str = "train", test_fraction: float = 0.1,
               captions_file: str = "", max_captions: int = 0):
    if split not in SPLITS:
      raise ValueError(f"folder dataset split {split!r}; expected one of {SPLITS}.")
    if not os.path.isdir(data_dir):
      raise FileNotFoundError(f"folder dataset directory {data_dir!r} does not exist (config.data.data_dir).")
    self.split, self.max_captions = split, max_captions
    self.name = f"folder:{data_dir}"
    split_dirs = all(os.path.isdir(os.path.join(data_dir, s)) for s in SPLITS)
    roots = [os.path.join(data_dir, s) for s in SPLITS] if split_dirs else [data_dir]
    self.root = os.path.join(data_dir, split) if split_dirs else data_dir
    listings = {r: _list_images(r) for r in roots}
    self._jsonl = self._find_captions_file(self.root, captions_file)
    if self._jsonl:
      files, self._captions, jsonl_classes = _read_jsonl(self._jsonl)
    else:
      files, self._captions, jsonl_classes = listings[self.root], None, {}
    if not files:
      raise ValueError(f"no images found under {self.root!r} (extensions {', '.join(IMAGE_EXTENSIONS)}); "
                       "expected images with sidecar .txt captions or a captions.jsonl file.")
    # Class ids over all split roots, so a class keeps its id in train and test.
    class_dirs = sorted({p.split("/")[0] for listing in listings.values() for p in listing if "/" in p})
    class_index = {d: i for i, d in enumerate(class_dirs)}
    if not split_dirs:
      files = [f for f in files if _in_test_split(f, test_fraction) == (split == "test")]
    if not files:
      raise ValueError(f"the {split!r} split of folder dataset {data_dir!r} is empty; set "
                       "config.data.folder.test_fraction > 0 or add train/ and test/ subfolders.")
    self._files = files
    self._class_ids = []
    for i, f in enumerate(files):
      if f in jsonl_classes:
        self._class_ids.append(jsonl_classes[f])
      elif "/" in f and class_dirs:
        self._class_ids.append(class_index[f.split("/")[0]])
      else:
        self._class_ids.append(i)

  @staticmethod
  def _find_captions_file(root: str, captions_file: str) -> str:
    if captions_file:
      path = os.path.join(root, captions_file)
      if not os.path.isfile(path):
        raise FileNotFoundError(f"captions file {path!r} (config.data.folder.captions_file) does not exist.")
      return path
    for name in DEFAULT_CAPTION_FILES:
      if os.path.isfile(os.path.join(root, name)):
        return os.path.join(root, name)
    return ""

  def __len__(self) -> int:
    return len(self._files)

  def path(self, index: int) -> str:
    return os.path.join(self.root, self._files[index])

  def __getitem__(self, index: int) -> dict[str, Any]:
    rel = self._files[index]
    path = self.path(index)
    key = f"{self.split}/{rel}"
    if self._captions is not None:
      captions = select_captions(self._captions[rel], self.max_captions)
      if not captions:
        raise BadRecordError(self.name, key, f"no non-empty caption in {self._jsonl}", path)
    else:
      caption_path = os.path.splitext(path)[0] + ".txt"
      captions = read_caption_file(caption_path, self.max_captions, dataset=self.name, key=key)
      if not captions:
        raise BadRecordError(self.name, key, "caption file has no non-empty line", caption_path)
    image = decode_image(path, dataset=self.name, key=key)
    return {"image": image, "captions": captions, "class_id": self._class_ids[index], "key": key}


def make_folder_source(data_config: ml_collections.ConfigDict, split: str) -> FolderSource:
  options = data_config.folder
  return FolderSource(data_config.data_dir, split, test_fraction=options.test_fraction,
                      captions_file=options.captions_file, max_captions=options.max_captions)
