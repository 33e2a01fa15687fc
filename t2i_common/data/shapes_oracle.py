"""Oracle for `shapes` images: which (colour, shape) objects does an image contain?

It scores generated images against the objects they should show, so it must work on imperfect pixels
(JPEG, blur, generator artefacts) and never crash on garbage (it then finds nothing).

Method, per image:
1. Background = per-channel median of the border ring.
2. Every pixel is explained as a blend `bg + alpha * (colour - bg)` of the background with each palette
   colour (the anti-aliasing model the renderer uses); the colour with the smallest residual wins, and a
   pixel is foreground when its alpha >= 0.5 and the residual is small.
3. Connected foreground blobs get the majority colour of their confident pixels (a blob with two large
   colour groups, e.g. two touching shapes, is split by colour).
4. Shape: for each candidate shape, a box is fitted to the blob's soft alpha by matching first and second
   moments, the renderer's own anti-aliased mask is drawn in that box, and the soft IoU with the blob's alpha
   is computed; the best shape is kept if its IoU is high enough.

CLI: `python -m t2i_common.data.shapes_oracle --examples FILE.jsonl` where each line holds "image" (a path,
absolute or relative to the JSONL file) and "objects" (list of {"color", "shape"}) or, instead, "caption"
(whose objects are parsed); prints {object_recall, object_precision, all_present, ...} as JSON.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
from typing import Iterable, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from t2i_common.cli_args import errors_as_exit
from t2i_common.data.records import iter_jsonl
from t2i_common.data.shapes_captions import parse_caption
from t2i_common.data.shapes_render import COLOR_NAMES, COLORS, SHAPES, coverage, unit_moments

_PALETTE = np.asarray([COLORS[c] for c in COLOR_NAMES], np.float32)  # [C, 3]
MIN_SHAPE_IOU = 0.6      # below this the blob is not any known shape
MIN_EXTENT = 0.09        # blobs whose longer bbox side is below this fraction of the image are noise
WORK_RESOLUTION = 128   # larger images are downsampled by an integer factor towards this
MAX_BLOBS = 16           # bound the work on garbage images with many blobs
_RESIDUAL_FRACTION = 0.35  # allowed distance from a palette blend line, as a fraction of the line length
_RESIDUAL_FLOOR = 25.0
_CHROMA_WEIGHT = 0.1  # weight of chroma against luma when fitting alpha

# RGB -> (Y, sqrt(w) Cb, sqrt(w) Cr) (BT.601): distances in this space weigh chroma by _CHROMA_WEIGHT.
_ALPHA_METRIC = (np.asarray([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
                            np.float32) * np.sqrt([1.0, _CHROMA_WEIGHT, _CHROMA_WEIGHT])[:, None]).T.astype(np.float32)


def _to_rgb_float(image) -> np.ndarray:
  """Accepts uint8 [H,W,3] (also [H,W], [H,W,4], or floats in [0,1]) and returns float32 [H,W,3] in 0..255."""
  arr = np.asarray(image)
  if arr.ndim == 2:
    arr = np.stack([arr] * 3, -1)
  if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
    raise ValueError(f"detect_objects expects an RGB image [H, W, 3], got shape {arr.shape}.")
  arr = arr[..., :3]
  if arr.dtype != np.uint8:
    arr = arr.astype(np.float32)
    if arr.size and np.nanmax(arr) <= 1.0 + 1e-6:
      arr = arr * 255.0
    arr = np.clip(np.nan_to_num(arr), 0, 255)
  return arr.astype(np.float32)


def estimate_background(image: np.ndarray) -> np.ndarray:
  """Per-channel median of a border ring (objects are placed away from the border)."""
  h, w, _ = image.shape
  k = max(1, min(h, w) // 32)
  ring = np.concatenate([image[:k].reshape(-1, 3), image[-k:].reshape(-1, 3),
                         image[:, :k].reshape(-1, 3), image[:, -k:].reshape(-1, 3)])
  return np.median(ring, axis=0)


def _blend_fit(image: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """alpha [H,W,C] of each palette colour over the background, best colour [H,W] and its RGB residual.

  The colour is chosen in RGB, but alpha (which carries the shape) is fitted in a space that weighs luma
  above chroma: JPEG keeps chroma at half resolution, so chroma edges are blurred twice as much.
  """
  d = _PALETTE - background  # [C, 3]
  p = image - background
  norm2 = np.maximum((d * d).sum(-1), 1.0)
  proj = p @ d.T  # [H, W, C]
  rgb_alpha = np.clip(proj / norm2, 0.0, 1.0)
  resid2 = np.maximum((p * p).sum(-1, keepdims=True) - 2 * rgb_alpha * proj + rgb_alpha**2 * norm2, 0.0)
  best = resid2.argmin(-1)
  best_resid = np.sqrt(np.take_along_axis(resid2, best[..., None], -1)[..., 0])
  dw, pw = d @ _ALPHA_METRIC, p @ _ALPHA_METRIC
  alpha = np.clip((pw @ dw.T) / np.maximum((dw * dw).sum(-1), 1.0), 0.0, 1.0)
  return alpha, best, best_resid


def _fit_shape(alpha: np.ndarray) -> tuple[str, float, tuple[float, float, float, float]] | None:
  """Best (shape, soft IoU, box) for a soft mask; the box of each hypothesis is fitted by moments."""
  mass = float(alpha.sum())
  if mass < 4.0:
    return None
  h, w = alpha.shape
  xs, ys = np.arange(w) + 0.5, np.arange(h) + 0.5
  col, row = alpha.sum(0), alpha.sum(1)
  cx, cy = float(col @ xs) / mass, float(row @ ys) / mass
  vx, vy = float(col @ (xs - cx) ** 2) / mass, float(row @ (ys - cy) ** 2) / mass
  best = None
  for shape in SHAPES:
    _, ucx, ucy, uvx, uvy = unit_moments(shape)
    bw, bh = np.sqrt(vx / uvx), np.sqrt(vy / uvy)
    if bw < 2 or bh < 2:
      continue
    box = (cx - ucx * bw, cy - ucy * bh, cx - ucx * bw + bw, cy - ucy * bh + bh)
    template = coverage(shape, box, w, h)
    iou = float(np.minimum(alpha, template).sum() / max(np.maximum(alpha, template).sum(), 1e-6))
    if best is None or iou > best[1]:
      best = (shape, iou, box)
  return best


def detect_objects(image) -> list[dict]:
  """Objects found in an image: [{"color", "shape", "bbox": [x0, y0, x1, y1] pixels, "score": IoU}]."""
  img = _to_rgb_float(image)
  factor = min(img.shape[:2]) // WORK_RESOLUTION
  if factor < 2:
    return _detect(img)
  # Box-downsample large images: shapes are recognised as well at ~128 px, and far faster.
  h, w = img.shape[0] // factor, img.shape[1] // factor
  found = _detect(img[:h * factor, :w * factor].reshape(h, factor, w, factor, 3).mean((1, 3)))
  for obj in found:
    obj["bbox"] = [v * factor for v in obj["bbox"]]
  return found


def _detect(img: np.ndarray) -> list[dict]:
  """detect_objects on a float32 [H, W, 3] image in 0..255."""
  h, w, _ = img.shape
  if min(h, w) < 8:
    return []
  background = estimate_background(img)
  alpha, best, resid = _blend_fit(img, background)
  best_alpha = np.take_along_axis(alpha, best[..., None], -1)[..., 0]
  seg_len = np.linalg.norm(_PALETTE - background, axis=-1)[best]
  foreground = (best_alpha >= 0.5) & (resid <= _RESIDUAL_FLOOR + _RESIDUAL_FRACTION * seg_len)
  labels, count = ndimage.label(foreground, structure=np.ones((3, 3), bool))
  if count == 0:
    return []
  min_extent = MIN_EXTENT * min(h, w)
  areas = np.bincount(labels.ravel())[1:]
  slices = ndimage.find_objects(labels)
  candidates = [k for k in np.argsort(-areas)[:MAX_BLOBS]
                if max(slices[k][0].stop - slices[k][0].start, slices[k][1].stop - slices[k][1].start) >= min_extent]
  found = []
  for k in candidates:
    label = k + 1
    pad = 3
    y0, y1 = max(slices[k][0].start - pad, 0), min(slices[k][0].stop + pad, h)
    x0, x1 = max(slices[k][1].start - pad, 0), min(slices[k][1].stop + pad, w)
    lab = labels[y0:y1, x0:x1]
    blob = lab == label
    others = (lab != 0) & ~blob
    colours = best[y0:y1, x0:x1]
    confident = blob & (best_alpha[y0:y1, x0:x1] >= 0.75)
    votes = np.bincount(colours[confident if confident.any() else blob], minlength=len(COLOR_NAMES))
    min_votes = max(0.2 * votes.sum(), (min_extent / 2) ** 2)
    groups = [c for c in np.argsort(-votes) if votes[c] >= min_votes] or [int(votes.argmax())]
    for c in groups:
      part = blob if len(groups) == 1 else _largest_component(blob & (colours == c))
      # The anti-aliased rim (alpha < 0.5) lies just outside the thresholded blob.
      support = ndimage.binary_dilation(part, iterations=2) & ~others
      if len(groups) > 1:
        support &= ~(blob & ~part)
      soft = alpha[y0:y1, x0:x1, c] * support
      fit = _fit_shape(soft)
      if fit is None or fit[1] < MIN_SHAPE_IOU:
        continue
      shape, iou, (bx0, by0, bx1, by1) = fit
      bbox = [int(np.floor(bx0 + x0)), int(np.floor(by0 + y0)), int(np.ceil(bx1 + x0)), int(np.ceil(by1 + y0))]
      found.append({"color": COLOR_NAMES[c], "shape": shape, "bbox": bbox, "score": round(float(iou), 4)})
  return found


def _largest_component(mask: np.ndarray) -> np.ndarray:
  labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
  if count <= 1:
    return mask
  return labels == (np.bincount(labels.ravel())[1:].argmax() + 1)


def _pairs(objects: Iterable) -> list[tuple[str, str]]:
  """(color, shape) pairs from dicts, pairs or 'color shape' strings."""
  pairs = []
  for obj in objects:
    if isinstance(obj, dict):
      pairs.append((obj["color"], obj["shape"]))
    elif isinstance(obj, str):
      color, shape = obj.split()
      pairs.append((color, shape))
    else:
      pairs.append((obj[0], obj[1]))
  return pairs


def match(want: collections.Counter, got: collections.Counter) -> collections.Counter:
  """How many of each listed (color, shape) the detections hold, each detection serving one object; a listed
  colour of None (a caption that names the shape only) takes a detection of that shape in any colour, after the
  objects with a colour have taken theirs."""
  exact = collections.Counter({k: v for k, v in want.items() if k[0] is not None}) & got
  spare = collections.Counter(shape for _, shape in (got - exact).elements())
  wild = collections.Counter({k: min(v, spare[k[1]]) for k, v in want.items() if k[0] is None})
  return exact + wild


def score(images: Iterable, objects_lists: Iterable[Sequence], detections: list | None = None,
          holdout: Iterable[tuple[str, str]] = ()) -> dict:
  """Object recall/precision of `detect_objects` against the listed objects of each image.

  A detection counts once per listed object with the same (color, shape) (multiset matching; a listed colour of
  None matches any colour, `match`). object_recall = matched / listed, object_precision = matched / detected (0
  when nothing is detected), all_present = fraction of images whose every listed object is matched; color_recall
  (over the objects listed with a colour; absent when none is) and shape_recall give the same recall for colour
  alone and shape alone (diagnostics), and object_recall/<shape> the object recall of the listed objects of each
  shape (a model learns some shapes before others). With `holdout` (the (color, shape) pairs kept out of
  training), object_recall/seen and object_recall/held_out split the recall between the listed objects of
  trained pairs and of held-out ones (compositional generalisation). If `detections` is a list, each image's
  detections are appended to it.
  """
  holdout = set(holdout)
  listed = matched = detected = complete = num = 0
  color_hits = shape_hits = colored = 0
  per_group: dict[str, list[int]] = {}  # a shape, "seen" or "held_out" -> [matched, listed]
  for image, objects in zip(images, objects_lists, strict=True):
    want = collections.Counter(_pairs(objects))
    found_list = detect_objects(image)
    if detections is not None:
      detections.append(found_list)
    got = collections.Counter((d["color"], d["shape"]) for d in found_list)
    matched_pairs = match(want, got)
    hits = sum(matched_pairs.values())
    listed += sum(want.values())
    detected += sum(got.values())
    matched += hits
    complete += hits == sum(want.values())
    num += 1
    for (color, shape), count in want.items():
      groups = [shape] + ([("held_out" if (color, shape) in holdout else "seen")] if holdout else [])
      for group in groups:
        tally = per_group.setdefault(group, [0, 0])
        tally[0] += matched_pairs[(color, shape)]
        tally[1] += count
    wanted_colors = collections.Counter(c for c, _ in want.elements() if c is not None)
    colored += sum(wanted_colors.values())
    color_hits += sum((wanted_colors & collections.Counter(c for c, _ in got.elements())).values())
    shape_hits += sum((collections.Counter(s for _, s in want.elements())
                       & collections.Counter(s for _, s in got.elements())).values())
  return {
      "object_recall": matched / listed if listed else 1.0,
      "object_precision": matched / detected if detected else 0.0,
      "all_present": complete / num if num else 0.0,
      **({"color_recall": color_hits / colored if colored else 1.0} if colored or not listed else {}),
      "shape_recall": shape_hits / listed if listed else 1.0,
      "num_images": num,
      "num_objects": listed,
      "num_detections": detected,
      **{f"object_recall/{group}": hit / total for group, (hit, total) in sorted(per_group.items())},
  }


def _read_examples(path: str) -> tuple[list[str], list[list[tuple[str, str]]]]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--examples file {path!r} does not exist.")
  base = os.path.dirname(os.path.abspath(path))
  paths, objects = [], []
  for lineno, record in iter_jsonl(path):
    if not isinstance(record, dict) or "image" not in record or not ({"objects", "caption"} & set(record)):
      raise ValueError(f"{path}:{lineno}: each line needs 'image' and 'objects' (or 'caption'); "
                       f"got {json.dumps(record)[:100]}.")
    image_path = record["image"] if os.path.isabs(record["image"]) else os.path.join(base, record["image"])
    if not os.path.isfile(image_path):
      raise FileNotFoundError(f"{path}:{lineno}: image {image_path!r} does not exist.")
    listed = record.get("objects")
    if listed is None:
      listed = parse_caption(record["caption"])["objects"]
    try:
      pairs = _pairs(listed)
    except (KeyError, ValueError, IndexError, TypeError):
      raise ValueError(f"{path}:{lineno}: 'objects' must be a list of {{'color', 'shape'}}; got {listed!r}.")
    for color, shape in pairs:
      if (color is not None and color not in COLORS) or shape not in SHAPES:
        raise ValueError(f"{path}:{lineno}: unknown object ({color!r}, {shape!r}); colours {COLOR_NAMES}, "
                         f"shapes {SHAPES}.")
    paths.append(image_path)
    objects.append(pairs)
  return paths, objects


def _load_image(path: str) -> np.ndarray:
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"))


def main(argv: Sequence[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--examples", required=True, help="JSONL with 'image' and 'objects' (or 'caption').")
  parser.add_argument("--detections", default="", help="optional JSONL to write each image's detections to.")
  args = parser.parse_args(argv)
  paths, objects = _read_examples(args.examples)
  detections: list = []
  result = score((_load_image(p) for p in paths), objects, detections=detections)
  if args.detections:
    with open(args.detections, "w") as f:
      for path, found in zip(paths, detections):
        f.write(json.dumps({"image": path, "detections": found}) + "\n")
  print(json.dumps(result, indent=2, sort_keys=True))
  return result


if __name__ == "__main__":
  with errors_as_exit("shapes_oracle"):
    main()
