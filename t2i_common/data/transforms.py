"""Image transforms: AttnGAN's CUB bounding-box crop and its multi-scale train transform.

AttnGAN (code/datasets.py with torchvision): Resize(int(max_size * 76 / 64)) scales the *shorter* side,
RandomCrop(max_size), RandomHorizontalFlip, then each smaller pyramid level is a bilinear resize of that crop;
values are normalised to [-1, 1]. PIL's bilinear resize is what torchvision applies to PIL images.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image


def bbox_crop(image: np.ndarray, bbox: Sequence[float]) -> np.ndarray:
  """AttnGAN's CUB crop around a bounding box (x, y, width, height) in pixels.

  The reference takes r = int(0.75 * max(w, h)) and crops [centre - r, centre + r] in each direction,
  clipped to the image: a square of side 2r = 1.5 * max(w, h) where it fits. Box values are truncated to int
  first, as the reference reads bounding_boxes.txt with `.astype(int)`.
  """
  x, y, w, h = (int(v) for v in bbox)
  height, width = image.shape[:2]
  r = int(max(w, h) * 0.75)
  cx, cy = int((2 * x + w) / 2), int((2 * y + h) / 2)
  x1, x2 = max(0, cx - r), min(width, cx + r)
  y1, y2 = max(0, cy - r), min(height, cy + r)
  if x2 <= x1 or y2 <= y1:
    raise ValueError(f"bounding box {tuple(bbox)} lies outside the {width}x{height} image")
  return image[y1:y2, x1:x2]


def resize_shorter(image: Image.Image, size: int) -> Image.Image:
  """Scales so the shorter side is `size` (torchvision Resize(int) semantics: the longer side is truncated)."""
  width, height = image.size
  if min(width, height) == size:
    return image
  if width <= height:
    new = (size, int(size * height / width))
  else:
    new = (int(size * width / height), size)
  return image.resize(new, Image.BILINEAR)


def to_float(image: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  out = np.array(image, np.float32)  # a fresh array, scaled in place
  out *= np.float32(1 / 127.5)
  out -= np.float32(1.0)
  return out


def image_pyramid(
    image: np.ndarray,
    sizes: Sequence[int],
    *,
    rng: np.random.Generator | None = None,
    random_crop: bool = False,
    random_flip: bool = False,
    crop_ratio: float = 76 / 64,
) -> dict[int, np.ndarray]:
  """Returns {size: float32 [size, size, 3] in [-1, 1]} for each of the ascending `sizes`.

  With random_crop the shorter side goes to int(max(sizes) * crop_ratio) and a random max-size square is cut;
  without, the shorter side goes to max(sizes) and the centre square is kept (evaluation, shapes).
  Smaller levels are resized from the largest crop, so all levels show the same content.
  """
  if (random_crop or random_flip) and rng is None:
    raise ValueError("image_pyramid needs an rng for random_crop / random_flip.")
  top = sizes[-1]
  pil = Image.fromarray(image)
  if random_crop:
    pil = resize_shorter(pil, int(top * crop_ratio))
    width, height = pil.size
    top_y = int(rng.integers(0, height - top + 1))
    left = int(rng.integers(0, width - top + 1))
  else:
    pil = resize_shorter(pil, top)
    width, height = pil.size
    top_y, left = (height - top) // 2, (width - top) // 2
  if (left, top_y, width, height) != (0, 0, top, top):
    pil = pil.crop((left, top_y, left + top, top_y + top))
  if random_flip and rng.random() < 0.5:
    pil = pil.transpose(Image.FLIP_LEFT_RIGHT)
  out = {top: to_float(np.asarray(pil))}
  for size in sizes[:-1]:
    out[size] = to_float(np.asarray(pil.resize((size, size), Image.BILINEAR)))
  return out
