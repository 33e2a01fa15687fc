"""The one input pipeline: sources by name, a grain loader for training and a padded pass for evaluation.

Training (`make_loader`): each process takes a contiguous 1/process_count share of the source (equal sizes, the
remainder dropped, so all processes run the same number of steps), shuffles it with a seed that changes every
epoch, loads and transforms examples in grain threads (optionally in worker processes), and batches
`global_batch_size // process_count` examples. Every random choice for an example (caption, crop, flip,
text_transform) comes from a generator seeded by (seed, epoch, source index), so the stream does not depend on
timing, and `get_state()` / `set_state()` resume at exactly the next batch.

Evaluation (`iterate_eval`): one unshuffled pass, padded to whole global batches with "mask" False on padding.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterator

import grain
import ml_collections
import numpy as np

from t2i_common.data.config import validate_data_config
from t2i_common.data.records import BadRecordError, check_record
from t2i_common.data.transforms import image_pyramid

TextTransform = Callable[[str, np.random.Generator], dict[str, np.ndarray]]
_RESERVED = ("caption", "caption_index", "class_id", "index", "mask", "num_skipped", "_valid")
_BAD = "_bad_record"

log = logging.getLogger(__name__)


def make_source(data_config: ml_collections.ConfigDict, split: str):
  """The random-access source `data_config.name` for `split` ("train" | "test")."""
  validate_data_config(data_config)
  name = data_config.name
  if name == "shapes":
    from t2i_common.data import shapes
    # Rendered at the largest output size, so no level is upsampled (shapes.resolution is not used here).
    resolution = max(data_config.image_sizes[-1], shapes.MIN_RESOLUTION)
    return shapes.ShapesSource.from_config(data_config.shapes, split, resolution=resolution)
  if name == "folder":
    from t2i_common.data.folder import make_folder_source
    return make_folder_source(data_config, split)
  if name == "cub":
    from t2i_common.data.cub import make_cub_source
    return make_cub_source(data_config, split)
  from t2i_common.data.coco import make_coco_source
  return make_coco_source(data_config, split)


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax
    return jax.process_index(), jax.process_count()
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} outside [0, {process_count}).")
  return process_index, process_count


class _ExampleMaker:
  """Turns a source index into a transformed example; picklable, so it can run in grain workers."""

  def __init__(self, source, data_config: ml_collections.ConfigDict, train: bool,
               text_transform: TextTransform | None, with_images: bool = True):
    self.source, self.text_transform, self.with_images = source, text_transform, with_images
    self.dataset = str(getattr(source, "name", data_config.name))
    self.sizes = tuple(data_config.image_sizes)
    self.random_crop = train and data_config.random_crop
    self.random_flip = train and data_config.random_flip
    self.crop_ratio = float(data_config.crop_ratio)
    self.skip_bad = data_config.on_bad_record == "skip"

  def record(self, index: int) -> dict[str, Any]:
    if not self.with_images and hasattr(self.source, "text_record"):
      record = self.source.text_record(index)  # e.g. shapes: the captions without rendering the scene
    else:
      record = self.source[index]
    check_record(record, dataset=self.dataset, require_image=self.with_images)
    return record

  def example(self, record: dict[str, Any], index: int, rng: np.random.Generator) -> dict[str, Any]:
    captions = record["captions"]
    caption_index = int(rng.integers(len(captions)))
    out = {}
    if self.with_images:
      images = image_pyramid(record["image"], self.sizes, rng=rng, random_crop=self.random_crop,
                             random_flip=self.random_flip, crop_ratio=self.crop_ratio)
      if len(self.sizes) == 1:
        out = {"image": images[self.sizes[0]]}
      else:
        out = {f"image_{s}": images[s] for s in self.sizes}
    out.update(caption=captions[caption_index], caption_index=np.int32(caption_index),
               class_id=np.int32(record.get("class_id", index)), index=np.int64(index))
    if self.text_transform is not None:
      try:
        extra = self.text_transform(captions[caption_index], rng)
      except ValueError as e:
        # e.g. a caption with no word in the vocabulary: as unusable as an empty one.
        raise BadRecordError(self.dataset, str(record.get("key", index)),
                             f"text_transform rejected caption {caption_index} ({e})") from None
      if not isinstance(extra, dict):
        raise TypeError(f"text_transform must return a dict of arrays, got {type(extra).__name__}.")
      clash = [k for k in extra if k in out or k in _RESERVED]
      if clash:
        raise ValueError(f"text_transform returned reserved batch keys {clash}; rename them.")
      out.update({k: np.asarray(v) for k, v in extra.items()})
    return out


class _TrainExample:
  """(position in the repeated shuffled stream, local position) -> example or a bad-record marker."""

  def __init__(self, maker: _ExampleMaker, seed: int, offset: int, local_size: int):
    self.maker, self.seed, self.offset, self.local_size = maker, seed, offset, local_size

  def __call__(self, step: int, position: int) -> dict[str, Any]:
    epoch, index = step // self.local_size, self.offset + int(position)
    try:
      record = self.maker.record(index)
      return self.maker.example(record, index, np.random.default_rng([self.seed, epoch, index]))
    except BadRecordError as e:
      if not self.maker.skip_bad:
        raise
      log.warning("skipping %s", e)
      return {_BAD: str(e)}


class _EvalExample:
  """Padded position -> example with "mask"; a bad record (skip mode) is replaced by a masked-out good one."""

  def __init__(self, maker: _ExampleMaker, seed: int, size: int, global_batch: int, local_batch: int,
               process_index: int):
    self.maker, self.seed, self.size = maker, seed, size
    self.global_batch, self.local_batch, self.process_index = global_batch, local_batch, process_index

  def __call__(self, position: int) -> dict[str, Any]:
    batch, offset = divmod(int(position), self.local_batch)
    slot = batch * self.global_batch + self.process_index * self.local_batch + offset
    real = slot < self.size
    index = slot % self.size
    skipped = 0
    for attempt in range(self.size):
      try:
        example = self.maker.example(self.maker.record(index), index,
                                     np.random.default_rng([self.seed, 0, index]))
        break
      except BadRecordError as e:
        if not self.maker.skip_bad:
          raise
        if attempt == 0 and real:
          log.warning("skipping %s", e)
          skipped, real = 1, False
        index = (index + 1) % self.size
    else:
      raise ValueError(f"every record of dataset {self.maker.dataset!r} is bad; nothing to evaluate.")
    example.update(mask=np.bool_(real), num_skipped=np.int64(skipped))
    return example


class _DropBadRecordsIterator(grain.DatasetIterator):
  """Drops bad-record markers; the next example adds how many were dropped before it to "num_skipped".

  Every element gets "_valid" True. Bad records after the last example of a finite stream are reported by a
  copy of the last example with "_valid" False, because grain's own batching (which passes batches between
  worker processes through shared memory) needs every element to have the same structure.
  """

  _last = None

  def __next__(self) -> dict[str, Any]:
    skipped = 0
    while True:
      try:
        element = next(self._parent)
      except StopIteration:
        if skipped and self._last is not None:
          return {**self._last, "num_skipped": np.int64(skipped), "_valid": np.False_}
        if skipped:
          log.warning("%d bad records at the end of the stream are skipped but not counted.", skipped)
        raise
      if _BAD in element:
        skipped += 1
        continue
      self._last = {**element, "num_skipped": np.int64(element.get("num_skipped", 0) + skipped),
                    "_valid": np.True_}
      return self._last

  def get_state(self) -> dict[str, Any]:
    return self._parent.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state)


class _DropBadRecords(grain.IterDataset):
  def __iter__(self) -> grain.DatasetIterator:
    return _DropBadRecordsIterator(self._parent.__iter__())


class DataIterator(Iterator[dict[str, np.ndarray]]):
  """Batches of numpy arrays with a checkpointable position and a count of skipped bad records.

  Attributes: local_batch_size, num_examples (this process's share per epoch), steps_per_epoch,
  num_skipped (bad records dropped so far; part of the state, so it survives a restore).
  """

  def __init__(self, dataset: grain.IterDataset, *, local_batch_size: int, num_examples: int,
               steps_per_epoch: int, drop_remainder: bool):
    self._iterator = dataset.__iter__()
    self.local_batch_size, self.num_examples = local_batch_size, num_examples
    self.drop_remainder = drop_remainder
    self.steps_per_epoch = steps_per_epoch
    self._num_skipped = 0

  @property
  def num_skipped(self) -> int:
    return self._num_skipped

  def __iter__(self) -> DataIterator:
    return self

  def __len__(self) -> int:
    return self.steps_per_epoch

  def __next__(self) -> dict[str, np.ndarray]:
    while True:
      batch = dict(next(self._iterator))
      self._num_skipped += int(batch.pop("num_skipped").sum())
      valid = batch.pop("_valid")
      if not valid.all():  # only in the last batch of a finite stream that ends with bad records
        batch = {k: v[valid] for k, v in batch.items()}
      if valid.any() and (not self.drop_remainder or valid.sum() == self.local_batch_size):
        # grain stacks strings as fixed-width unicode; callers get Python strings.
        batch["caption"] = batch["caption"].astype(object)
        return batch

  def get_state(self) -> dict[str, Any]:
    """A JSON-serialisable position: restoring it with set_state() yields exactly the next batch."""
    return {"pipeline": self._iterator.get_state(), "num_skipped": self._num_skipped}

  def set_state(self, state: dict[str, Any]) -> None:
    if not isinstance(state, dict) or "pipeline" not in state:
      raise ValueError("set_state() expects a state returned by get_state() of this loader.")
    self._iterator.set_state(state["pipeline"])
    self._num_skipped = int(state.get("num_skipped", 0))

  def close(self) -> None:
    """Stops worker processes and threads (also done when the iterator is garbage-collected)."""
    close = getattr(self._iterator, "close", None)
    if close is not None:
      close()


def _local_batch(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f"global batch size {global_batch_size} must be a positive multiple of the process count "
                     f"{process_count}.")
  return global_batch_size // process_count


def _finish(ds: grain.MapDataset, data_config: ml_collections.ConfigDict, local_batch: int,
            drop_remainder: bool, workers: bool) -> grain.IterDataset:
  read = grain.ReadOptions(num_threads=data_config.read_threads, prefetch_buffer_size=data_config.prefetch_buffer)
  it = _DropBadRecords(ds.to_iter_dataset(read))
  it = it.batch(local_batch, drop_remainder=drop_remainder)
  if workers and data_config.num_workers > 0:
    from absl import flags
    if not flags.FLAGS.is_parsed():
      # grain's worker processes read absl flags; outside absl.app (tests, notebooks) use their defaults.
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_config.num_workers,
                                                     per_worker_buffer_size=data_config.worker_buffer_size))
  return it


def make_loader(
    data_config: ml_collections.ConfigDict,
    split: str,
    *,
    global_batch_size: int,
    seed: int,
    text_transform: TextTransform | None = None,
    shuffle: bool = True,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    augment: bool | None = None,
    with_images: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
) -> DataIterator:
  """Training batches for this process (see the module docstring); num_epochs=None repeats forever.

  text_transform(caption, rng) runs per example (in the workers) and must give the same shapes for every caption
  (e.g. fixed-length token ids); a ValueError from it makes the record bad (error or skip, as configured).
  augment defaults to shuffle (random crop/flip as configured); process_index/process_count default to JAX's.
  with_images=False gives batches without images (captions, indices, text_transform outputs), for a trainer
  that looks the images' encodings up by index; sources with a `text_record(index)` then skip decoding.
  The batch order depends on data_config.num_workers, so restore a state with the same worker count.
  """
  p, count = _process(process_index, process_count)
  local_batch = _local_batch(global_batch_size, count)
  source = make_source(data_config, split)
  local_size = len(source) // count
  if local_size == 0:
    raise ValueError(f"split {split!r} of {data_config.name!r} has {len(source)} examples, fewer than the "
                     f"{count} processes.")
  if drop_remainder and local_size < local_batch:
    raise ValueError(f"split {split!r} of {data_config.name!r} gives each process {local_size} examples, fewer "
                     f"than one local batch of {local_batch}; lower the batch size or set drop_remainder=False.")
  if not 0 <= seed < 2**32:
    raise ValueError(f"seed {seed} must be in [0, 2**32).")
  maker = _ExampleMaker(source, data_config, train=shuffle if augment is None else augment,
                        text_transform=text_transform, with_images=with_images)
  ds = grain.MapDataset.range(local_size)
  if shuffle:
    ds = ds.shuffle(seed=seed)  # Reseeded per epoch by repeat(): every epoch has its own order.
  ds = ds.repeat(num_epochs).map_with_index(_TrainExample(maker, seed, p * local_size, local_size))
  steps = local_size // local_batch if drop_remainder else math.ceil(local_size / local_batch)
  return DataIterator(_finish(ds, data_config, local_batch, drop_remainder, workers=True),
                      local_batch_size=local_batch, num_examples=local_size, steps_per_epoch=steps,
                      drop_remainder=drop_remainder)


def iterate_eval(
    data_config: ml_collections.ConfigDict,
    split: str,
    batch_size: int,
    text_transform: TextTransform | None = None,
    *,
    seed: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> DataIterator:
  """One deterministic, unshuffled, unaugmented pass over `split` in global batches of `batch_size`.

  Global batch k holds source examples [k * batch_size, (k + 1) * batch_size), process p its p-th local slice;
  the last batch is padded with repeats flagged by "mask" False, so every process runs the same number of
  batches (len(iterator)). The caption of each example is drawn from (seed, index).
  """
  p, count = _process(process_index, process_count)
  local_batch = _local_batch(batch_size, count)
  source = make_source(data_config, split)
  size = len(source)
  if size == 0:
    raise ValueError(f"split {split!r} of {data_config.name!r} is empty.")
  num_batches = math.ceil(size / batch_size)
  maker = _ExampleMaker(source, data_config, train=False, text_transform=text_transform)
  ds = grain.MapDataset.range(num_batches * local_batch).map(
      _EvalExample(maker, seed, size, batch_size, local_batch, p))
  return DataIterator(_finish(ds, data_config, local_batch, drop_remainder=True, workers=False),
                      local_batch_size=local_batch, num_examples=size, steps_per_epoch=num_batches,
                      drop_remainder=True)
