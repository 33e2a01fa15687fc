"""The built-in synthetic `shapes` text-image dataset: 1-3 coloured shapes, captions, ground-truth objects.

Each example is generated on request from (seed, split, index): a scene is laid out in unit coordinates
(so one index gives the same scene at every resolution), rendered anti-aliased, and captioned from templates
whose attributes and spatial relations are true for the rendered positions. Attribute combinations in
`holdout` (default: every purple star) never appear in "train"; "test" contains them (a fraction
`test_holdout_fraction` of test scenes is forced to include one) alongside ordinary scenes, for measuring
compositional generalisation. `t2i_common.data.shapes_oracle` detects the objects back from pixels.

    src = ShapesSource("train", resolution=64)
    ex = src[0]  # {"image", "captions", "objects", "class_id", "key"}
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import ml_collections
import numpy as np

from t2i_common.data.shapes_captions import CAPTION_STYLES, make_captions
from t2i_common.data.shapes_render import (COLOR_NAMES, COLORS, SHAPES, SIZE_RANGES, SIZES,
                                           background_name, render_scene, sample_background)

__all__ = ["SHAPES", "COLORS", "SIZES", "ShapesSource", "shapes_config", "parse_holdout", "class_id_of",
           "num_classes"]

SPLITS = ("train", "test")
MIN_RESOLUTION, MAX_RESOLUTION = 32, 1024
MAX_OBJECTS = 3
# Layout, as fractions of the image side: objects keep EDGE_MARGIN from the border and are apart by at least
# OBJECT_GAP along one axis, so no object hides another and each stays a separate blob after blur or JPEG.
EDGE_MARGIN = 0.03
OBJECT_GAP = 0.05
_NUM_PAIRS = len(COLOR_NAMES) * len(SHAPES)
_RNG_TAG = 0x5A4E5  # keeps these streams apart from other users of the same seed


def shapes_config() -> ml_collections.ConfigDict:
  """Options of the shapes source (used as config.data.shapes)."""
  return ml_collections.ConfigDict({
      "num_train": 20000,
      "num_test": 2000,
      "resolution": 64,
      "seed": 0,
      # "color shape" strings; () holds nothing out.
      "holdout": ("purple star",),
      "test_holdout_fraction": 0.25,
      "captions_per_image": 5,
      # "templates" (varied wording, sizes, relations) or "plain" ("a red circle and a blue square").
      "caption_style": "templates",
      "min_objects": 1,
      "max_objects": 3,
      # Probabilities of min_objects .. max_objects objects per scene; () draws the count uniformly.
      "object_count_probs": (),
      # Probability that a training scene with fewer than max_objects objects has captions that also name one
      # object it does not show (as web captions name things their images lack); plain and shapes_only captions.
      "absent_object_prob": 0.0,
  })


def parse_holdout(holdout: Iterable) -> tuple[tuple[str, str], ...]:
  """Normalises ("purple star", ("red", "circle"), ...) to sorted (color, shape) pairs; unknown names fail."""
  if isinstance(holdout, str):
    holdout = [holdout] if holdout.strip() else []
  pairs = set()
  for item in holdout:
    parts = item.replace("_", " ").split() if isinstance(item, str) else list(item)
    if len(parts) != 2:
      raise ValueError(f"holdout entry {item!r} must be a 'color shape' string or a (color, shape) pair, "
                       "e.g. 'purple star'.")
    color, shape = (str(p).strip().lower() for p in parts)
    if color not in COLORS:
      raise ValueError(f"holdout entry {item!r}: unknown colour {color!r}; choose from {COLOR_NAMES}.")
    if shape not in SHAPES:
      raise ValueError(f"holdout entry {item!r}: unknown shape {shape!r}; choose from {SHAPES}.")
    pairs.add((color, shape))
  return tuple(sorted(pairs))


def _pair_index(color: str, shape: str) -> int:
  return COLOR_NAMES.index(color) * len(SHAPES) + SHAPES.index(shape)


def class_id_of(pairs: Iterable[tuple[str, str]]) -> int:
  """Dense id of a set of distinct (color, shape) pairs: its rank among all sets of up to MAX_OBJECTS pairs
  (smaller sets first, then the combinatorial number system), so equal sets share an id.
  """
  indices = sorted({_pair_index(c, s) for c, s in pairs})
  if not 1 <= len(indices) <= MAX_OBJECTS:
    raise ValueError(f"class_id_of needs 1..{MAX_OBJECTS} distinct (color, shape) pairs, got {len(indices)}.")
  offset = sum(math.comb(_NUM_PAIRS, k) for k in range(1, len(indices)))
  return offset + sum(math.comb(c, i + 1) for i, c in enumerate(indices))


def num_classes(max_objects: int = MAX_OBJECTS) -> int:
  """Number of distinct class ids for scenes of up to `max_objects` objects."""
  return sum(math.comb(_NUM_PAIRS, k) for k in range(1, max_objects + 1))


def _place(rng: np.random.Generator, sides: Sequence[tuple[float, float]]) -> list[tuple[float, ...]] | None:
  """Random unit-coordinate boxes of the given (w, h) that keep the margins, or None after many misses."""
  boxes: list[tuple[float, ...]] = []
  for w, h in sides:
    for _ in range(40):
      x0 = rng.uniform(EDGE_MARGIN, 1 - EDGE_MARGIN - w)
      y0 = rng.uniform(EDGE_MARGIN, 1 - EDGE_MARGIN - h)
      box = (x0, y0, x0 + w, y0 + h)
      if all(_apart(box, other) for other in boxes):
        boxes.append(box)
        break
    else:
      return None
  return boxes


def _apart(a: Sequence[float], b: Sequence[float]) -> bool:
  return max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3]) >= OBJECT_GAP


class ShapesSource:
  """Grain-compatible random-access source of rendered shapes scenes (see the module docstring)."""

  def __init__(self, split: str = "train", resolution: int = 64, seed: int = 0, num_examples: int | None = None,
               holdout: Iterable = (("purple", "star"),), captions_per_image: int = 5, min_objects: int = 1,
               max_objects: int = 3, test_holdout_fraction: float = 0.25, caption_style: str = "templates",
               object_count_probs: Sequence[float] = (), absent_object_prob: float = 0.0):
    if split not in SPLITS:
      raise ValueError(f"shapes split must be one of {SPLITS}, got {split!r}.")
    if not isinstance(resolution, (int, np.integer)) or not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
      raise ValueError(f"shapes resolution must be an int in [{MIN_RESOLUTION}, {MAX_RESOLUTION}], "
                       f"got {resolution!r}.")
    if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
      raise ValueError(f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, got min_objects={min_objects}, "
                       f"max_objects={max_objects}.")
    counts = max_objects - min_objects + 1
    probs = np.asarray(tuple(object_count_probs), np.float64)
    if probs.size and (probs.shape != (counts,) or np.any(probs < 0) or not np.isclose(probs.sum(), 1.0)):
      raise ValueError(f"object_count_probs {tuple(object_count_probs)} must hold {counts} non-negative "
                       f"probabilities summing to 1, one per object count {min_objects} .. {max_objects}; () draws "
                       "the count uniformly.")
    if captions_per_image < 1:
      raise ValueError(f"captions_per_image must be >= 1, got {captions_per_image}.")
    if caption_style not in CAPTION_STYLES:
      raise ValueError(f"shapes caption_style must be one of {CAPTION_STYLES}, got {caption_style!r}.")
    if not 0.0 <= absent_object_prob <= 1.0:
      raise ValueError(f"absent_object_prob must be in [0, 1], got {absent_object_prob}.")
    if absent_object_prob and caption_style == "templates":
      raise ValueError("absent_object_prob names an object that is not drawn, which the 'templates' captions' "
                       "sizes and relations cannot describe; use caption_style 'plain' or 'shapes_only'.")
    if not 0.0 <= test_holdout_fraction <= 1.0:
      raise ValueError(f"test_holdout_fraction must be in [0, 1], got {test_holdout_fraction}.")
    if num_examples is None:
      num_examples = 20000 if split == "train" else 2000
    if num_examples < 1:
      raise ValueError(f"num_examples must be >= 1, got {num_examples}.")
    self.split, self.resolution, self.seed = split, int(resolution), int(seed)
    self.num_examples = int(num_examples)
    self.holdout = parse_holdout(holdout)
    self.captions_per_image = int(captions_per_image)
    self.min_objects, self.max_objects = int(min_objects), int(max_objects)
    self.object_count_probs = probs / probs.sum() if probs.size else None
    self.absent_object_prob = float(absent_object_prob)
    self.test_holdout_fraction = float(test_holdout_fraction)
    self.caption_style = caption_style
    all_pairs = [(c, s) for c in COLOR_NAMES for s in SHAPES]
    self._pairs = all_pairs if split == "test" else [p for p in all_pairs if p not in self.holdout]
    if len(self._pairs) < self.max_objects:
      raise ValueError(f"holdout {self.holdout} leaves {len(self._pairs)} (color, shape) pairs for training, "
                       f"fewer than max_objects={self.max_objects}.")

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, split: str, resolution: int | None = None
                  ) -> "ShapesSource":
    """Builds the source from `shapes_config()` fields; `resolution` overrides config.resolution."""
    return cls(split=split, resolution=config.resolution if resolution is None else resolution,
               seed=config.seed, num_examples=config.num_train if split == "train" else config.num_test,
               holdout=config.holdout, captions_per_image=config.captions_per_image,
               min_objects=config.min_objects, max_objects=config.max_objects,
               test_holdout_fraction=config.test_holdout_fraction, caption_style=config.caption_style,
               object_count_probs=config.get("object_count_probs", ()),
               absent_object_prob=config.get("absent_object_prob", 0.0))

  def __len__(self) -> int:
    return self.num_examples

  def __repr__(self) -> str:
    return (f"ShapesSource(split={self.split!r}, resolution={self.resolution}, seed={self.seed}, "
            f"num_examples={self.num_examples}, holdout={self.holdout})")

  def _index(self, index: int) -> int:
    index = int(index)
    if index < 0:
      index += self.num_examples
    if not 0 <= index < self.num_examples:
      raise IndexError(f"shapes index {index} out of range for {self.num_examples} {self.split} examples.")
    return index

  def scene(self, index: int) -> dict:
    """The resolution-free layout of example `index`: {"background": rgb, "objects": [{"shape", "color",
    "size", "box": unit-square (x0, y0, x1, y1)}], "captions"}.
    """
    index = self._index(index)
    rng = np.random.default_rng([_RNG_TAG, self.seed, SPLITS.index(self.split), index])
    if self.object_count_probs is None:  # uniform; kept as the first draw so earlier datasets are unchanged
      n = int(rng.integers(self.min_objects, self.max_objects + 1))
    else:
      n = self.min_objects + int(rng.choice(len(self.object_count_probs), p=self.object_count_probs))
    pairs = [self._pairs[i] for i in rng.choice(len(self._pairs), n, replace=False)]
    if self.split == "test" and self.holdout and rng.random() < self.test_holdout_fraction:
      forced = self.holdout[rng.integers(len(self.holdout))]
      if forced not in pairs:
        pairs[rng.integers(n)] = forced
    objects = self._layout(rng, pairs)
    background = sample_background(rng, [o["color"] for o in objects])
    named = objects + self._absent_object(rng, objects)
    captions = make_captions(named, background_name(background), self.captions_per_image, rng, self.caption_style)
    return {"background": background, "objects": objects, "captions": captions, "index": index}

  def _absent_object(self, rng: np.random.Generator, objects: Sequence[dict]) -> list[dict]:
    """[] or, for training scenes with room for one more (absent_object_prob), an object the captions name but
    the image does not show: a pair the split may draw, of a shape not drawn (a shapes_only caption would
    otherwise name one shape twice)."""
    if not self.absent_object_prob or self.split != "train" or len(objects) >= self.max_objects:
      return []  # no draw from rng: scenes without the option stay those of earlier datasets
    if rng.random() >= self.absent_object_prob:
      return []
    drawn = {o["shape"] for o in objects}
    candidates = [p for p in self._pairs if p[1] not in drawn]
    color, shape = candidates[rng.integers(len(candidates))]
    return [{"shape": shape, "color": color, "size": SIZES[rng.integers(len(SIZES))]}]

  def _layout(self, rng: np.random.Generator, pairs: Sequence[tuple[str, str]]) -> list[dict]:
    sizes = [SIZES[rng.integers(len(SIZES))] for _ in pairs]
    for attempt in range(60):
      if attempt >= 30:  # crowded draw: shrink one large object at a time until it fits
        large = [k for k, s in enumerate(sizes) if s == "large"]
        if large:
          sizes[large[rng.integers(len(large))]] = "small"
      sides = [(side, side) for side in (rng.uniform(*SIZE_RANGES[size]) for size in sizes)]
      # Largest first: they are the hard ones to fit.
      order = sorted(range(len(pairs)), key=lambda k: -sides[k][0] * sides[k][1])
      boxes = _place(rng, [sides[k] for k in order])
      if boxes is not None:
        objects = [None] * len(pairs)
        for k, box in zip(order, boxes):
          objects[k] = {"shape": pairs[k][1], "color": pairs[k][0], "size": sizes[k], "box": box}
        return objects
    raise RuntimeError(f"could not lay out {pairs} without overlap; lower max_objects or SIZE_RANGES.")

  def render(self, scene: dict, resolution: int | None = None) -> dict:
    """The record for a scene from `scene()`, rendered at `resolution` (default: the source's)."""
    r = self.resolution if resolution is None else int(resolution)
    return {"image": render_scene(scene["background"], scene["objects"], r), **self._metadata(scene, r)}

  def text_record(self, index: int) -> dict:
    """Example `index` without its image (captions, objects, class_id, key): no rendering."""
    return self._metadata(self.scene(index), self.resolution)

  def _metadata(self, scene: dict, r: int) -> dict:
    objects = []
    for obj in scene["objects"]:
      x0, y0, x1, y1 = obj["box"]
      # Whole pixels, end-exclusive: image[y0:y1, x0:x1] holds every pixel the object touches.
      bbox = [int(math.floor(x0 * r)), int(math.floor(y0 * r)), int(math.ceil(x1 * r)), int(math.ceil(y1 * r))]
      objects.append({"shape": obj["shape"], "color": obj["color"], "size": obj["size"], "bbox": bbox})
    return {
        "captions": list(scene["captions"]),
        "objects": objects,
        "class_id": class_id_of((o["color"], o["shape"]) for o in objects),
        "key": f"shapes/{self.split}/{self.seed}/{scene['index']}",
    }

  def __getitem__(self, index: int) -> dict:
    return self.render(self.scene(index))
