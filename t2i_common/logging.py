"""Metrics (TensorBoard + metrics.jsonl, process 0 only), a progress bar with rate/ETA, and image grids.

`MetricWriter(workdir)` writes `<workdir>/tensorboard/events.*` and `<workdir>/metrics.jsonl` (one JSON object per
write: {"step": n, "name": value, ...}); on processes other than 0 it does nothing, so trainers call it
unconditionally. `progress(...)` is a tqdm bar on a terminal and periodic plain lines (rate, ETA) in a log file.
`image_grid` / `save_image_grid` tile images into one picture, optionally with wrapped captions under each.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import sys
import textwrap
import time
from typing import IO, Any, Mapping, Sequence

import jax
import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _is_main_process() -> bool:
  return jax.process_index() == 0


def setup_cli_logging() -> None:
  """INFO logs with timestamps for the command-line entry points; absl at WARNING (orbax's per-save INFO lines
  would drown the progress bar); JAX's backend discovery at WARNING (on a machine without a TPU it logs
  "Unable to initialize backend 'tpu': ... Failed to open libtpu.so" at INFO, which reads like an error)."""
  import logging as std_logging  # this module's own name shadows it at module level
  std_logging.basicConfig(level=std_logging.INFO, format="%(asctime)s %(name)s: %(message)s")
  std_logging.getLogger("absl").setLevel(std_logging.WARNING)
  std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)


def write_eval_json(workdir: str, name: str, result: dict) -> dict:
  """Writes `result` as JSON to <workdir>/eval/<name> (process 0 only) and adds its "path"; returns result."""
  if _is_main_process():
    path = os.path.join(workdir, "eval", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      json.dump(result, f, indent=2)
    result["path"] = path
  return result


def _to_float(name: str, value: Any) -> float:
  array = np.asarray(value)
  if array.size != 1:
    raise ValueError(f"metric {name!r} has shape {array.shape}; write_scalars takes scalars (average it first).")
  return float(array.reshape(()))


def _summary_writer_class():
  """tensorboardX.SummaryWriter, imported without pulling in PyTorch.

  tensorboardX imports torch at module load when it is installed (only for add_graph and torch tensors, which
  we never use); that costs seconds and hundreds of MB in every training process, so hide torch meanwhile.
  """
  import sys
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tensorboardX handles
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


class MetricWriter:
  """Scalars and images to TensorBoard and metrics.jsonl; a no-op on every process but 0."""

  def __init__(self, workdir: str, *, enabled: bool | None = None):
    self.enabled = _is_main_process() if enabled is None else enabled
    self.workdir = workdir
    self._tb = None
    self._jsonl: IO[str] | None = None
    if self.enabled:
      SummaryWriter = _summary_writer_class()  # imported lazily: only process 0 needs it
      os.makedirs(workdir, exist_ok=True)
      self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"))
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    values = {name: _to_float(name, v) for name, v in scalars.items()}
    for name, v in values.items():
      self._tb.add_scalar(name, v, global_step=int(step))
    # JSON has no NaN/inf; write them as strings so the file stays parseable and the bad value stays visible.
    record = {"step": int(step)}
    record.update({k: (v if math.isfinite(v) else str(v)) for k, v in values.items()})
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """`images`: name -> uint8 [H, W, 3] (e.g. from `image_grid`)."""
    if not self.enabled:
      return
    for name, image in images.items():
      self._tb.add_image(name, to_uint8(image), global_step=int(step), dataformats="HWC")
    self._tb.flush()

  def write_text(self, step: int, texts: Mapping[str, str]) -> None:
    if not self.enabled:
      return
    for name, text in texts.items():
      self._tb.add_text(name, text, global_step=int(step))

  def flush(self) -> None:
    if self.enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled and self._tb is not None:
      self._tb.close()
      self._jsonl.close()
      self._tb = self._jsonl = None
    self.enabled = False


# ----------------------------------------------------------------------------------------------------------------
# Progress.

def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  return str(datetime.timedelta(seconds=int(seconds)))


class Progress:
  """A tqdm bar on a terminal; otherwise plain "desc: n/total, rate, elapsed, ETA" lines every `every_s` seconds.

  Rate and ETA count only the steps done since this object was created (resumed runs start at `initial`).
  """

  def __init__(self, total: int, desc: str = "", initial: int = 0, *, enabled: bool = True,
               every_s: float = 30.0, stream: IO[str] | None = None):
    self.total, self.desc, self.n = int(total), desc, int(initial)
    self._start_n, self._start = self.n, time.perf_counter()
    self._last_print = self._start
    self._every_s = every_s
    self._stream = stream if stream is not None else sys.stderr
    self._postfix: dict[str, Any] = {}
    self._bar = None
    interactive = getattr(self._stream, "isatty", lambda: False)()
    self._quiet = not _is_main_process()
    if enabled and interactive and not self._quiet:
      from tqdm import tqdm
      self._bar = tqdm(total=self.total, initial=self.n, desc=desc, file=self._stream, dynamic_ncols=True)

  @property
  def rate(self) -> float:
    elapsed = time.perf_counter() - self._start
    return (self.n - self._start_n) / elapsed if elapsed > 0 else float("nan")

  def line(self) -> str:
    rate = self.rate
    eta = (self.total - self.n) / rate if rate > 0 else float("inf")
    post = "".join(f", {k}={v:.4g}" if isinstance(v, float) else f", {k}={v}" for k, v in self._postfix.items())
    pct = 100.0 * self.n / self.total if self.total else 100.0
    return (f"{self.desc}: {self.n}/{self.total} ({pct:.1f}%), {rate:.3g} it/s, "
            f"elapsed {_duration(time.perf_counter() - self._start)}, ETA {_duration(eta)}{post}")

  def restart_clock(self) -> None:
    """Measures the rate from now on (e.g. after the first step's compilation)."""
    self._start_n, self._start = self.n, time.perf_counter()
    self._last_print = self._start
    if self._bar is not None:
      self._bar.reset(total=self.total)
      self._bar.update(self.n)

  def set_postfix(self, **values: Any) -> None:
    self._postfix = {k: (float(v) if isinstance(v, (np.floating, np.ndarray, jax.Array)) else v)
                     for k, v in values.items()}
    if self._bar is not None:
      self._bar.set_postfix(self._postfix, refresh=False)

  def update(self, n: int = 1) -> None:
    self.n += n
    if self._bar is not None:
      self._bar.update(n)
      return
    now = time.perf_counter()
    if not self._quiet and (now - self._last_print >= self._every_s or self.n >= self.total):
      self._last_print = now
      print(self.line(), file=self._stream, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def progress(total: int, desc: str = "", initial: int = 0, **kwargs: Any) -> Progress:
  """A progress bar with rate and ETA (see `Progress`; `enabled=False` keeps only the plain lines)."""
  return Progress(total, desc, initial, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Image grids.

_FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "DejaVuSans.ttf",  # found by PIL on its own font path (e.g. matplotlib installs)
)


def _font(size: int) -> ImageFont.ImageFont:
  for candidate in _FONT_CANDIDATES:
    try:
      return ImageFont.truetype(candidate, size)
    except OSError:
      continue
  return ImageFont.load_default()


def to_uint8(images: np.ndarray) -> np.ndarray:
  """uint8 images pass through; floats must be in [0, 1] (convert [-1, 1] model outputs with (x + 1) / 2)."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  if not np.issubdtype(images.dtype, np.floating):
    raise TypeError(f"images must be uint8 or float in [0, 1], got dtype {images.dtype}.")
  lo, hi = float(np.nanmin(images)), float(np.nanmax(images))
  if lo < -0.01 or hi > 1.01:
    raise ValueError(f"float images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; "
                     f"convert [-1, 1] outputs with (x + 1) / 2 first.")
  return np.round(np.clip(np.nan_to_num(images), 0.0, 1.0) * 255.0).astype(np.uint8)


def _caption_lines(caption: str, width_px: int, font: ImageFont.ImageFont, max_lines: int) -> list[str]:
  # Wrap by characters so the widest line fits; measure the font's average glyph width once.
  avg = max(1.0, font.getlength("abcdefghijklmnopqrstuvwxyz") / 26)
  lines = textwrap.wrap(caption, width=max(4, int(width_px / avg))) or [""]
  if len(lines) > max_lines:
    lines = lines[:max_lines]
    lines[-1] = lines[-1][:max(0, len(lines[-1]) - 1)] + "…"
  return lines


# Smallest side at which a captioned grid cell keeps its caption readable (passed as image_grid's min_side).
CAPTIONED_MIN_SIDE = 96


def image_grid(images: np.ndarray | Sequence[np.ndarray], captions: Sequence[str] | None = None,
               ncols: int | None = None, *, padding: int = 2, max_caption_lines: int = 4,
               font_size: int | None = None, min_side: int = 0) -> np.ndarray:
  """Tiles [N, H, W, 3] (or [N, H, W] grey) images into one uint8 [H', W', 3] grid with optional captions.

  Images whose shorter side is below `min_side` are enlarged by an integer factor (nearest neighbour, so
  pixels stay visible as they are) towards it: 32 px samples leave no room for a readable caption."""
  images = to_uint8(np.stack([np.asarray(i) for i in images]) if not isinstance(images, np.ndarray) else images)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
    raise ValueError(f"images must be [N, H, W, 3] (or 1/4 channels), got shape {images.shape}.")
  images = np.broadcast_to(images[..., :3], images.shape[:3] + (3,)) if images.shape[-1] == 1 else images[..., :3]
  n, h, w, _ = images.shape
  if n == 0:
    raise ValueError("image_grid needs at least one image.")
  factor = max(1, min_side // max(1, min(h, w)))
  if factor > 1:
    images = images.repeat(factor, axis=1).repeat(factor, axis=2)
    h, w = h * factor, w * factor
  if captions is not None and len(captions) != n:
    raise ValueError(f"got {len(captions)} captions for {n} images; pass one caption per image.")
  ncols = ncols or int(math.ceil(math.sqrt(n)))
  nrows = int(math.ceil(n / ncols))
  font, text_h, line_h, wrapped = None, 0, 0, None
  if captions is not None:
    font = _font(font_size or max(8, min(14, w // 10)))
    line_h = int(math.ceil(font.getbbox("Ag")[3])) + 2
    wrapped = [_caption_lines(str(c), w, font, max_caption_lines) for c in captions]
    text_h = line_h * max(len(lines) for lines in wrapped) + padding
  cell_h, cell_w = h + text_h + padding, w + padding
  canvas = Image.new("RGB", (ncols * cell_w + padding, nrows * cell_h + padding), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  for i in range(n):
    x, y = padding + (i % ncols) * cell_w, padding + (i // ncols) * cell_h
    canvas.paste(Image.fromarray(np.ascontiguousarray(images[i])), (x, y))
    if wrapped is not None:
      for j, line in enumerate(wrapped[i]):
        draw.text((x, y + h + 1 + j * line_h), line, fill=(0, 0, 0), font=font)
  return np.asarray(canvas)


def save_image_grid(images: np.ndarray | Sequence[np.ndarray], path: str,
                    captions: Sequence[str] | None = None, ncols: int | None = None, **kwargs: Any) -> np.ndarray:
  """Writes `image_grid(images, captions, ncols)` as a PNG at `path`; returns the grid array."""
  grid = image_grid(images, captions, ncols, **kwargs)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  Image.fromarray(grid).save(path)
  return grid
