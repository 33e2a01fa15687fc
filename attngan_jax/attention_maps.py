"""Word-region attention pictures (AttnGAN paper Eq. 15 and Fig. 2-5 style).

Input: beta [T, N], for each of the caption's T words a weight per image region, where each region's weights
form a distribution over the words (the generator's attention, softmax over words; for the DAMSM the
normalised similarity of Eq. 8, `damsm_word_region_attention`). Following the paper's visualisation:
weights <= 1/T (no more than a uniform share of the region) are set to 0; each word's N weights are reshaped
to sqrt(N) x sqrt(N), upsampled smoothly (bilinear, then a Gaussian filter with sigma = upscale / 3, as
skimage's pyramid_expand) to the image size, scaled to [0, 1] by their maximum, and overlaid on the image as a
heat map; the k words with the largest summed weight get one panel each, labelled with the word.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from t2i_common.logging import image_grid, to_uint8


def damsm_word_region_attention(regions: np.ndarray, words: np.ndarray, length: int) -> np.ndarray:
  """beta [length, N] of the DAMSM (Eq. 7-8): softmax over the caption's words of region . word.

  regions: [N, D] or [h, w, D] region features; words: [T, D] word features (the first `length` are real).
  The loss's region attention (Eq. 9) is softmax over regions of gamma1 * beta, so each word's map here has
  the same ordering of regions as the one the loss uses.
  """
  regions = np.asarray(regions, np.float64).reshape(-1, np.shape(regions)[-1])
  words = np.asarray(words, np.float64)[:length]
  if length < 1:
    raise ValueError(f"a caption needs at least one word, got length {length}.")
  s = regions @ words.T                                   # [N, T]
  s = np.exp(s - s.max(axis=1, keepdims=True))
  return (s / s.sum(axis=1, keepdims=True)).T             # [T, N]: each region's column sums to 1


def top_words(beta: np.ndarray, k: int = 5) -> np.ndarray:
  """Indices of the k words with the largest summed attention, largest first (ties: earlier word first)."""
  beta = np.asarray(beta)
  totals = beta.sum(axis=1)
  return np.argsort(-totals, kind="stable")[:k]


def _grid_side(n: int) -> int:
  side = int(round(math.sqrt(n)))
  if side * side != n:
    raise ValueError(f"{n} regions do not form a square grid; pass attention over sqrt(N) x sqrt(N) regions.")
  return side


def word_maps(beta: np.ndarray, size: int, *, threshold: Optional[float] = None) -> np.ndarray:
  """float32 [T, size, size] in [0, 1]: each word's thresholded, smoothly upsampled attention map.

  threshold: weights at or below it become 0; default 1/T (a uniform share over the T words).
  A word with no weight above the threshold gets an all-zero map.
  """
  beta = np.asarray(beta, np.float32)
  if beta.ndim != 2:
    raise ValueError(f"attention must be [T words, N regions], got shape {beta.shape}.")
  t, n = beta.shape
  side = _grid_side(n)
  threshold = 1.0 / t if threshold is None else threshold
  kept = np.where(beta > threshold, beta, 0.0).reshape(t, side, side)
  sigma = size / side / 3.0
  out = np.empty((t, size, size), np.float32)
  for i in range(t):
    up = np.asarray(Image.fromarray(kept[i], mode="F").resize((size, size), Image.BILINEAR))
    up = ndimage.gaussian_filter(up, sigma=sigma, mode="nearest") if sigma > 0.5 else up
    peak = up.max()
    out[i] = np.clip(up / peak, 0.0, 1.0) if peak > 0 else 0.0
  return out


def _heat(m: np.ndarray) -> np.ndarray:
  """Blue -> cyan -> yellow -> red colours of values in [0, 1] (a jet-like map) as float [..., 3]."""
  return np.stack([np.clip(1.5 - np.abs(4 * m - c), 0.0, 1.0) for c in (3.0, 2.0, 1.0)], axis=-1)


def overlay(image: np.ndarray, amap: np.ndarray, *, strength: float = 0.65) -> np.ndarray:
  """uint8 [H, W, 3]: `image` (uint8, or float in [0, 1]) tinted by the heat colours of `amap` [H, W] in [0, 1].

  Where the map is 0 the image is unchanged; where it is 1 the colour is `strength` heat, 1 - strength image.
  """
  img = to_uint8(image).astype(np.float32) / 255.0
  if amap.shape != img.shape[:2]:
    raise ValueError(f"map shape {amap.shape} differs from the image's {img.shape[:2]}.")
  w = strength * np.clip(amap, 0.0, 1.0)[..., None]
  return to_uint8((1.0 - w) * img + w * _heat(amap))


def _resize_image(image: np.ndarray, size: int) -> np.ndarray:
  image = to_uint8(image)
  if image.shape[:2] == (size, size):
    return image
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


def attention_panels(image: np.ndarray, beta: np.ndarray, words: Sequence[str], *, k: int = 5,
                     size: Optional[int] = None) -> tuple[list[np.ndarray], list[str]]:
  """(panels, labels): the image (labelled with the caption), then one overlay per top-k word, labelled with
  the word (fewer panels if the caption is shorter).

  image: uint8 or float [0, 1] [H, W, 3]; beta: [T, N] over the caption's T real words; words: the T words.
  size: panel side (default: the image's; small images are easier to read enlarged).
  """
  beta = np.asarray(beta)
  if len(words) != beta.shape[0]:
    raise ValueError(f"{len(words)} words but attention for {beta.shape[0]}: pass the caption's real words.")
  size = size or image.shape[0]
  base = _resize_image(image, size)
  maps = word_maps(beta, size)
  order = top_words(beta, k)
  panels = [base] + [overlay(base, maps[i]) for i in order]
  return panels, [" ".join(words)] + [str(words[i]) for i in order]


def attention_figure(images: Sequence[np.ndarray], betas: Sequence[np.ndarray], words: Sequence[Sequence[str]],
                     *, k: int = 5, size: Optional[int] = None) -> np.ndarray:
  """uint8 grid: one row per example (image + top-k word overlays, each labelled), rows padded to k + 1."""
  cells, labels = [], []
  for image, beta, ws in zip(images, betas, words, strict=True):
    panels, names = attention_panels(image, beta, ws, k=k, size=size)
    blank = np.full_like(panels[0], 255)
    cells += panels + [blank] * (k + 1 - len(panels))
    labels += names + [""] * (k + 1 - len(names))
  if not cells:
    raise ValueError("attention_figure needs at least one example.")
  return image_grid(np.stack(cells), labels, ncols=k + 1, max_caption_lines=3)
