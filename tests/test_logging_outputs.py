"""Metric writer (metrics.jsonl + TensorBoard events), progress lines with rate/ETA, image grids with captions."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from t2i_common import logging as t2i_logging


def test_metric_writer_jsonl_and_tensorboard(tmp_path):
  writer = t2i_logging.MetricWriter(str(tmp_path))
  writer.write_scalars(10, {"loss": np.float32(0.5), "grad_norm": np.array(float("nan"))})
  writer.write_images(10, {"samples": np.zeros((8, 8, 3), np.uint8)})
  writer.write_text(10, {"note": "hello"})
  with pytest.raises(ValueError, match="takes scalars"):
    writer.write_scalars(11, {"loss": np.ones(3)})
  writer.close()
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert lines == [{"step": 10, "loss": 0.5, "grad_norm": "nan"}]
  events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert len(events) == 1 and events[0].stat().st_size > 100  # scalars + an image were recorded

  silent = t2i_logging.MetricWriter(str(tmp_path / "other"), enabled=False)  # what processes > 0 get
  silent.write_scalars(1, {"loss": 1.0})
  silent.close()
  assert not (tmp_path / "other").exists()


def test_progress_plain_lines_have_rate_and_eta():
  stream = io.StringIO()  # not a TTY: no bar, plain lines
  bar = t2i_logging.progress(10, desc="train", initial=4, every_s=0.0, stream=stream)
  bar.update(3)
  bar.set_postfix(loss=0.25)
  bar.update(3)
  bar.close()
  lines = stream.getvalue().splitlines()
  assert len(lines) == 2
  assert lines[0].startswith("train: 7/10 (70.0%), ") and "it/s" in lines[0] and "ETA " in lines[0]
  assert lines[1].startswith("train: 10/10 (100.0%)") and lines[1].endswith("loss=0.25")


def test_image_grid_with_captions(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.uniform(0.0, 1.0, size=(5, 32, 32, 3)).astype(np.float32)
  plain = t2i_logging.image_grid(images, ncols=3)
  assert plain.dtype == np.uint8 and plain.shape == (2 * 34 + 2, 3 * 34 + 2, 3)
  captions = ["a small red circle and a large blue square above a green star"] + ["tiny"] * 4
  path = tmp_path / "grids" / "samples.png"
  grid = t2i_logging.save_image_grid(images, str(path), captions=captions, ncols=3)
  loaded = np.asarray(Image.open(path))
  np.testing.assert_array_equal(loaded, grid)
  assert grid.shape[1] == plain.shape[1] and grid.shape[0] > plain.shape[0]  # room for wrapped captions
  # The caption area under the first image holds dark text pixels over several lines; the first image is intact.
  text_area = grid[2 + 32:34 + 32 + 40, 2:34]
  dark_rows = np.where((text_area < 100).all(axis=-1).any(axis=1))[0]
  assert dark_rows.size > 0 and dark_rows.max() - dark_rows.min() > 12  # wrapped onto more than one line
  np.testing.assert_array_equal(grid[2:34, 2:34], np.round(images[0] * 255).astype(np.uint8))


def test_image_grid_input_errors():
  with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
    t2i_logging.image_grid(np.full((2, 4, 4, 3), -1.0, np.float32))
  with pytest.raises(ValueError, match="one caption per image"):
    t2i_logging.image_grid(np.zeros((2, 4, 4, 3), np.uint8), captions=["a"])
  grey = t2i_logging.image_grid(np.zeros((1, 4, 4), np.uint8))
  assert grey.shape == (8, 8, 3)


def test_image_grid_enlarges_small_images_by_whole_factors():
  images = np.zeros((2, 32, 32, 3), np.uint8)
  images[0, 0, 0] = 255
  grid = t2i_logging.image_grid(images, ncols=2, min_side=96, padding=0)
  assert grid.shape == (96, 192, 3)
  assert (grid[:3, :3] == 255).all() and (grid[3:6, 3:6] == 0).all()  # nearest neighbour, 3 x 3 blocks
  assert t2i_logging.image_grid(images, ncols=2, min_side=40, padding=0).shape == (32, 64, 3)
