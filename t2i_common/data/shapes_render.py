"""Geometry, palette and anti-aliased rendering of the synthetic `shapes` scenes.

Every shape is a polygon (or ellipse) in a unit box, stretched to the object's box. Coverage is computed by
drawing at `SUPERSAMPLE`x with PIL and box-filtering down, so edges carry fractional coverage like a real
anti-aliased image. The same `coverage` function renders the dataset and the oracle's templates, so the
oracle compares detections against exactly what the renderer draws.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "heart", "cross", "diamond", "ring")
# Saturated, well separated colours; white and black stay visible because backgrounds are mid-range greys.
COLORS = {
    "red": (220, 35, 35),
    "green": (30, 160, 50),
    "blue": (35, 75, 225),
    "yellow": (245, 215, 25),
    "purple": (145, 45, 180),
    "orange": (250, 135, 20),
    "white": (250, 250, 250),
    "black": (12, 12, 12),
}
COLOR_NAMES = tuple(COLORS)
SIZES = ("small", "large")
# Object side as a fraction of the image side. Small stays >= 14 px at 64 px so it is still recognisable.
SIZE_RANGES = {"small": (0.22, 0.26), "large": (0.36, 0.43)}
# Backgrounds: a grey level in this range plus a pale tint per channel; captions call them dark/gray/light.
BACKGROUND_LEVELS = (60.0, 200.0)
BACKGROUND_TINT = 10.0
MIN_CONTRAST = 80.0       # minimum RGB distance between the background and any object colour in the scene
MIN_LUMA_CONTRAST = 32.0  # minimum luma difference (see sample_background)
_BACKGROUND_CANDIDATES = 128
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)
SUPERSAMPLE = 4


def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
  verts = []
  for k in range(2 * points):
    radius = 1.0 if k % 2 == 0 else inner
    angle = -math.pi / 2 + k * math.pi / points  # first point straight up
    verts.append((radius * math.cos(angle), radius * math.sin(angle)))
  return verts


def _heart(n: int = 48) -> list[tuple[float, float]]:
  verts = []
  for k in range(n):
    t = 2 * math.pi * k / n
    x = 16 * math.sin(t) ** 3
    y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
    verts.append((x, -y))  # image y grows downwards
  return verts


def _cross(arm: float = 0.36) -> list[tuple[float, float]]:
  a, b = 0.5 - arm / 2, 0.5 + arm / 2
  return [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b), (0, a), (a, a)]


def _normalise(verts: Sequence[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
  """Stretches a polygon so its bounding box is exactly the unit box."""
  xs, ys = [v[0] for v in verts], [v[1] for v in verts]
  x0, y0, w, h = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
  return tuple(((x - x0) / w, (y - y0) / h) for x, y in verts)


RING_HOLE = 0.5  # inner / outer diameter of the ring
# Unit-box polygons; None means an ellipse filling the box (with a hole for the ring).
_POLYGONS = {
    "circle": None,
    "ring": None,
    "square": ((0, 0), (1, 0), (1, 1), (0, 1)),
    "triangle": ((0.5, 0), (1, 1), (0, 1)),
    "star": _normalise(_star()),
    "heart": _normalise(_heart()),
    "cross": _normalise(_cross()),
    "diamond": ((0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)),
}


def coverage(shape: str, box: Sequence[float], out_w: int, out_h: int, supersample: int = SUPERSAMPLE) -> np.ndarray:
  """Anti-aliased coverage in [0, 1] of `shape` filling `box` = (x0, y0, x1, y1), on an out_h x out_w grid.

  Coordinates are in pixels of the output grid (pixel i spans [i, i+1)); the box may be fractional.
  """
  if shape not in _POLYGONS:
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}.")
  s = supersample
  canvas = Image.new("L", (out_w * s, out_h * s), 0)
  draw = ImageDraw.Draw(canvas)
  x0, y0, x1, y1 = (float(v) * s for v in box)
  poly = _POLYGONS[shape]
  # PIL truncates vertices and fills both end pixels of a span, so a box [x0, x1) maps to [x0, x1 - 1]:
  # the filled area then matches the continuous box to within one sub-pixel and never leaves it.
  if poly is None:
    draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=255)
    if shape == "ring":
      mx, my = (x1 - x0) * (1 - RING_HOLE) / 2, (y1 - y0) * (1 - RING_HOLE) / 2
      draw.ellipse([x0 + mx, y0 + my, x1 - mx - 1, y1 - my - 1], fill=0)
  else:
    w, h = x1 - x0 - 1, y1 - y0 - 1
    draw.polygon([(x0 + px * w, y0 + py * h) for px, py in poly], fill=255)
  if s > 1:
    canvas = canvas.reduce(s)
  return np.asarray(canvas, dtype=np.float32) * (1.0 / 255.0)


@functools.lru_cache(maxsize=None)
def unit_moments(shape: str) -> tuple[float, float, float, float, float]:
  """(area, cx, cy, var_x, var_y) of the shape's coverage in its unit box, from a fine rendering.

  The oracle inverts these to fit each shape hypothesis's box to a detected blob.
  """
  n = 512
  a = coverage(shape, (0, 0, n, n), n, n, supersample=2).astype(np.float64)
  grid = (np.arange(n) + 0.5) / n
  m0 = a.sum()
  cx = (a.sum(0) * grid).sum() / m0
  cy = (a.sum(1) * grid).sum() / m0
  vx = (a.sum(0) * (grid - cx) ** 2).sum() / m0
  vy = (a.sum(1) * (grid - cy) ** 2).sum() / m0
  return m0 / n**2, cx, cy, vx, vy


def background_name(rgb: Sequence[float]) -> str:
  """'dark', 'gray' or 'light' from the mean level of a background colour."""
  level = float(np.mean(rgb))
  return "dark" if level < 100 else ("gray" if level < 156 else "light")


def luma(rgb) -> np.ndarray:
  """Rec. 601 luma of RGB values [..., 3]."""
  return np.asarray(rgb, np.float32) @ np.asarray(_LUMA_WEIGHTS, np.float32)


def sample_background(rng: np.random.Generator, colors: Sequence[str]) -> tuple[int, int, int]:
  """A pale-tinted grey that keeps every colour in `colors` clearly visible.

  Each colour must differ from it by MIN_CONTRAST in RGB and by MIN_LUMA_CONTRAST in luma: JPEG keeps
  chroma at half resolution, so an object seen through colour alone would blur into a blob at 64 px.
  Among random candidates the first that satisfies all constraints wins (the one with the best margins when
  none does), so the background stays random but depends on the scene's colours.
  """
  levels = rng.uniform(*BACKGROUND_LEVELS, size=(_BACKGROUND_CANDIDATES, 1))
  rgb = np.clip(levels + rng.uniform(-BACKGROUND_TINT, BACKGROUND_TINT, size=(_BACKGROUND_CANDIDATES, 3)), 0, 255)
  rgb = np.round(rgb)  # checked as it will be drawn
  palette = np.asarray([COLORS[c] for c in colors], np.float32)  # [K, 3]
  dist = np.linalg.norm(rgb[:, None, :] - palette[None], axis=-1).min(-1)
  luma_gap = np.abs(luma(rgb)[:, None] - luma(palette)[None]).min(-1)
  margin = np.minimum(dist / MIN_CONTRAST, luma_gap / MIN_LUMA_CONTRAST)
  ok = np.nonzero(margin >= 1.0)[0]
  pick = ok[0] if len(ok) else int(margin.argmax())
  return tuple(int(v) for v in rgb[pick])


def render_scene(background: Sequence[int], objects: Sequence[dict], resolution: int) -> np.ndarray:
  """Renders objects with unit-square boxes (fractions of the image side) into a uint8 [R, R, 3] image."""
  r = resolution
  image = np.empty((r, r, 3), np.uint8)
  image[...] = np.asarray(background, np.uint8)
  for obj in objects:
    bx0, by0, bx1, by1 = (v * r for v in obj["box"])
    # Rasterise and blend only in the object's own integer window: cheap at any resolution.
    ix0, iy0 = max(int(math.floor(bx0)), 0), max(int(math.floor(by0)), 0)
    ix1, iy1 = min(int(math.ceil(bx1)), r), min(int(math.ceil(by1)), r)
    alpha = coverage(obj["shape"], (bx0 - ix0, by0 - iy0, bx1 - ix0, by1 - iy0), ix1 - ix0, iy1 - iy0)[..., None]
    region = image[iy0:iy1, ix0:ix1].astype(np.float32)
    region += alpha * (np.asarray(COLORS[obj["color"]], np.float32) - region)
    image[iy0:iy1, ix0:ix1] = (region + 0.5).astype(np.uint8)
  return image
