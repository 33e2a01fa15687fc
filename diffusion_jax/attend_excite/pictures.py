"""Attention-map pictures (the paper's Fig. 2 / 8 style): for one image, every subject token's smoothed
cross-attention map at chosen steps over the image, without and with Attend-and-Excite for the same seed.

    save_attention_grid("cat_frog_seed0.png", words=["cat", "frog"], steps=[0, 10, 24],
                        rows={"plain": (image, maps), "Attend-and-Excite": (image_ae, maps_ae)})

images: float [H, W, 3] in [0, 1]; maps: [A, h, w, K] (A steps, K subjects), e.g.
`pipe.last_attend_excite["attention_maps"][b]` after a call with attention_steps=steps. One grid row per entry
of `rows`: the image, then for each step and subject the map (stretched to its own range, upsampled
bilinearly, as a heat overlay on the image), captioned "row: word @ step".
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from PIL import Image


def heat(values: np.ndarray) -> np.ndarray:
  """[H, W] in [0, 1] -> [H, W, 3] black-red-yellow-white ramp."""
  v = np.clip(values, 0.0, 1.0)[..., None]
  return np.clip(np.concatenate([3 * v, 3 * v - 1, 3 * v - 2], axis=-1), 0.0, 1.0)


def attention_overlay(image: np.ndarray, amap: np.ndarray, alpha: float = 0.6) -> np.ndarray:
  """The map [h, w] stretched to [0, 1] (min to max), upsampled to the image [H, W, 3], blended over it as heat."""
  image = np.asarray(image, np.float32)
  amap = np.nan_to_num(np.asarray(amap, np.float32))
  span = amap.max() - amap.min()
  amap = (amap - amap.min()) / span if span > 0 else np.zeros_like(amap)
  size = (image.shape[1], image.shape[0])
  up = np.asarray(Image.fromarray(amap).resize(size, Image.BILINEAR), np.float32)
  return (1 - alpha) * image + alpha * heat(up)


def attention_grid(rows: Mapping[str, tuple[np.ndarray, np.ndarray]], words: Sequence[str],
                   steps: Sequence[int]) -> tuple[list[np.ndarray], list[str], int]:
  """(cells, captions, ncols) of the grid described in the module docstring."""
  cells, captions = [], []
  for label, (image, maps) in rows.items():
    maps = np.asarray(maps)
    if maps.ndim != 4 or maps.shape[0] != len(steps) or maps.shape[-1] < len(words):
      raise ValueError(f"maps for {label!r} have shape {maps.shape}; expected [{len(steps)} steps, h, w, "
                       f">= {len(words)} subjects].")
    cells.append(np.asarray(image, np.float32))
    captions.append(f"{label}: image")
    for a, step in enumerate(steps):
      for k, word in enumerate(words):
        cells.append(attention_overlay(image, maps[a, :, :, k]))
        captions.append(f"{label}: {word} @ step {step}")
  return cells, captions, 1 + len(steps) * len(words)


def save_attention_grid(path: str, rows: Mapping[str, tuple[np.ndarray, np.ndarray]], words: Sequence[str],
                        steps: Sequence[int]) -> np.ndarray:
  """Writes the grid as a PNG at `path`; returns it (uint8)."""
  from t2i_common.logging import CAPTIONED_MIN_SIDE, save_image_grid
  cells, captions, ncols = attention_grid(rows, words, steps)
  return save_image_grid(cells, path, captions=captions, ncols=ncols, min_side=max(128, CAPTIONED_MIN_SIDE))


def token_words(tokens: Mapping[int, str], indices: Sequence[int]) -> list[str]:
  """Labels of token positions from `get_indices`' table ("cat</w>" -> "cat")."""
  return [tokens[i].replace("</w>", "") for i in indices]
