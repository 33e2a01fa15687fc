"""Record checks shared by all sources: image decoding, caption selection, and the bad-record error.

Every source returns records {"image": uint8 [H, W, 3], "captions": list[str], "class_id": int, "key": str}
(+ "objects" for shapes). A record that cannot be used (unreadable image, no caption) raises BadRecordError;
the loader either stops with it or, with on_bad_record="skip", drops the record and counts it, so nothing
broken is ever trained on silently.
"""
from __future__ import annotations

import io
import json
import os
import re
from typing import Any, Iterable, Iterator

import numpy as np
from PIL import Image

_WORD = re.compile(r"\w")


class BadRecordError(ValueError):
  """A record that cannot be used; the message names the dataset, the record and the file."""

  def __init__(self, dataset: str, key: str, reason: str, path: str = ""):
    self.dataset, self.key, self.reason, self.path = dataset, key, reason, path
    where = f" (file {path})" if path else ""
    super().__init__(
        f"bad record {key!r} in dataset {dataset!r}{where}: {reason}. Fix or remove it, or set "
        "config.data.on_bad_record='skip' to skip such records (they are counted in loader.num_skipped).")

  def __reduce__(self):
    # Keeps the error picklable, so it crosses grain worker processes intact.
    return (BadRecordError, (self.dataset, self.key, self.reason, self.path))


def decode_image(data: bytes | str | os.PathLike, *, dataset: str, key: str, path: str = "") -> np.ndarray:
  """Decodes encoded image bytes or a file to uint8 [H, W, 3] RGB; failures raise BadRecordError."""
  if not path and not isinstance(data, bytes):
    path = os.fspath(data)
  try:
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
      image.load()  # Forces the full decode here: truncated files otherwise fail later, far from the file name.
      array = np.asarray(image.convert("RGB"))
  except FileNotFoundError:
    raise BadRecordError(dataset, key, "image file not found", path) from None
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise BadRecordError(dataset, key, f"unreadable image ({type(e).__name__}: {e})", path) from None
  if array.ndim != 3 or min(array.shape[:2]) < 1:
    raise BadRecordError(dataset, key, f"image has unusable shape {array.shape}", path)
  return array


def select_captions(lines: Iterable[str], max_count: int = 0) -> list[str]:
  """AttnGAN's caption rule: the first `max_count` (0: all) lines that hold at least one word character."""
  captions = []
  for line in lines:
    # AttnGAN replaces this mojibake pair (present in the CUB caption files) with a space.
    line = line.replace("\ufffd\ufffd", " ").strip()
    if not _WORD.search(line):
      continue
    captions.append(line)
    if max_count and len(captions) == max_count:
      break
  return captions


def read_caption_file(path: str, max_count: int = 0, *, dataset: str, key: str) -> list[str]:
  """Captions from a text file with one caption per line; a missing or unreadable file is a bad record."""
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      return select_captions(f.read().splitlines(), max_count)
  except FileNotFoundError:
    raise BadRecordError(dataset, key, "caption file not found", path) from None
  except OSError as e:
    raise BadRecordError(dataset, key, f"unreadable caption file ({e})", path) from None


def check_record(record: dict[str, Any], *, dataset: str, path: str = "", require_image: bool = True) -> None:
  """Raises BadRecordError unless `record` has a uint8 RGB image (when `require_image`) and at least one
  non-empty caption."""
  key = str(record.get("key", "?"))
  image = record.get("image")
  if (require_image or image is not None) and (not isinstance(image, np.ndarray) or image.dtype != np.uint8
                                               or image.ndim != 3 or image.shape[-1] != 3):
    desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
    raise BadRecordError(dataset, key, f"image must be uint8 [H, W, 3], got {desc}", path)
  captions = record.get("captions")
  if not captions:
    raise BadRecordError(dataset, key, "no caption", path)
  for i, caption in enumerate(captions):
    if not isinstance(caption, str) or not _WORD.search(caption):
      raise BadRecordError(dataset, key, f"caption {i} is empty ({caption!r})", path)


# Records stored by the TFDS builders (cub, coco): ArrayRecord files written and read without TensorFlow.

def text(value: bytes | str) -> str:
  """TFDS returns Text features as bytes when read through a data source."""
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def record_features(**extra):
  """TFDS features of a captioned image record (+ `extra` features): the image is kept as encoded bytes,
  so the build never re-encodes and a corrupt file surfaces when loading, under on_bad_record."""
  import tensorflow_datasets as tfds
  return tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(shape=(), dtype=np.object_),
      "captions": tfds.features.Sequence(tfds.features.Text()),
      "class_id": np.int32,
      "key": tfds.features.Text(),
      **extra,
  })


def require_paths(dataset: str, root: str, files: list[str], dirs: list[str], instructions: str) -> None:
  """Raises FileNotFoundError listing what a manual download directory lacks, with the instructions."""
  missing = [p for p in files if not os.path.isfile(p)] + [p for p in dirs if not os.path.isdir(p)]
  if missing:
    raise FileNotFoundError(f"{dataset} manual directory {root!r} lacks {', '.join(missing)}.\n{instructions}")


def open_tfds_builder(builder_cls, data_dir: str, manual_dir: str = "", prepare: bool = True):
  """Returns the builder of `builder_cls` in `data_dir`, building its ArrayRecord files first if needed."""
  import tensorflow_datasets as tfds  # Deferred: only the TFDS-backed sources need it.
  builder = builder_cls(data_dir=data_dir or None, file_format="array_record")
  if builder.is_prepared():
    return builder
  command = (f"python -m {builder_cls.__module__} --manual_dir <dir> "
             f"--data_dir {data_dir or '~/tensorflow_datasets'}")
  if not prepare:
    raise FileNotFoundError(f"dataset {builder.name} is not built in {builder.data_dir!r}; build it with "
                            f"`{command}` or set config.data.<name>.prepare=True.")
  import jax
  if jax.process_count() > 1:
    # Several hosts writing the same files would corrupt them; building is a one-off single-process step.
    raise RuntimeError(f"dataset {builder.name} is not built in {builder.data_dir!r}; build it once before "
                       f"the multi-host run with `{command}` on a filesystem all hosts read.")
  config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
  try:
    builder.download_and_prepare(download_config=config)
  except AssertionError as e:
    # TFDS signals a missing or empty manual directory this way; the message holds the instructions.
    raise FileNotFoundError(f"cannot build {builder.name} (config.data.{builder_cls.__module__.split('.')[-1]}"
                            f".manual_dir={manual_dir!r}): {e}") from None
  return builder


class TfdsSource:
  """Random-access source over one split of a built TFDS dataset; `to_record` turns raw rows into records.

  The ArrayRecord data source is opened lazily and dropped when pickled, so grain worker processes each open
  their own file handles.
  """

  def __init__(self, builder, split: str, to_record):
    if split not in builder.info.splits:
      raise ValueError(f"dataset {builder.name} has no split {split!r}; it has {', '.join(builder.info.splits)}.")
    self.name = builder.name
    self.split, self._to_record = split, to_record
    self._builder_cls, self._data_dir_root = type(builder), os.fspath(builder.data_dir_root)
    self._source = builder.as_data_source(split)
    self._length = len(self._source)

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> dict[str, Any]:
    if self._source is None:
      builder = self._builder_cls(data_dir=self._data_dir_root, file_format="array_record")
      self._source = builder.as_data_source(self.split)
    return self._to_record(self._source[int(index)], self.name)

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_source"] = None
    return state


def prepare_main(builder_cls, argv: list[str] | None = None) -> None:
  """Command line that builds a TFDS dataset from its manually downloaded files."""
  import argparse
  parser = argparse.ArgumentParser(description=f"Builds {builder_cls.__name__} as ArrayRecord files.")
  parser.add_argument("--manual_dir", required=True, help="directory with the manually downloaded files")
  parser.add_argument("--data_dir", default="", help="TFDS data directory (default ~/tensorflow_datasets)")
  args = parser.parse_args(argv)
  builder = open_tfds_builder(builder_cls, args.data_dir, args.manual_dir, prepare=True)
  print(f"built {builder.name} in {builder.data_dir}: "
        + ", ".join(f"{k}={v.num_examples}" for k, v in builder.info.splits.items()))


def iter_jsonl(path: str) -> Iterator[tuple[int, Any]]:
  """(line number, parsed value) for each non-blank line; invalid JSON fails naming the file and line."""
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        yield line_no, json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_no}: not valid JSON ({e}).") from None

