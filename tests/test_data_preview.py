"""`python -m t2i_common.data.preview` end to end on shapes, read back by the shapes oracle."""
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from t2i_common.data import preview, shapes_oracle


def test_preview_shapes_grid_and_examples_readable_by_oracle(tmp_path):
  out = str(tmp_path / "preview")
  path = preview.main(["--dataset", "shapes", "--num", "6", "--resolution", "64", "--out", out,
                       "--split", "test", "--set", "shapes.num_test=20"])
  lines = [json.loads(l) for l in open(path)]
  assert len(lines) == 6 and [l["index"] for l in lines] == list(range(6))
  for line in lines:
    image = np.asarray(Image.open(os.path.join(out, line["image"])))
    assert image.shape == (64, 64, 3) and line["caption"] and line["objects"]
    assert {"color", "shape", "bbox"} <= set(line["objects"][0])
  grid = Image.open(os.path.join(out, "grid.png"))
  assert grid.size[0] >= 3 * 64 and grid.size[1] > 2 * 64  # 3 x 2 tiles with caption space below each
  # The oracle reads the JSONL (paths relative to it) and finds the listed objects in the written images.
  scores = shapes_oracle.main(["--examples", path])
  assert scores["num_images"] == 6 and scores["object_recall"] > 0.8


def test_preview_command_line_on_a_folder(tmp_path):
  root = tmp_path / "images"
  root.mkdir()
  for i in range(3):
    Image.fromarray(np.full((20, 30, 3), 60 * i, np.uint8)).save(root / f"{i}.png")
    (root / f"{i}.txt").write_text(f"a grey picture number {i}\n")
  out = tmp_path / "out"
  result = subprocess.run([sys.executable, "-m", "t2i_common.data.preview", "--dataset", "folder", "--data_dir",
                           str(root), "--num", "4", "--resolution", "16", "--out", str(out),
                           "--set", "folder.test_fraction=0.0"], capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = [json.loads(l) for l in open(out / "examples.jsonl")]
  assert sorted(l["caption"] for l in lines) == [f"a grey picture number {i}" for i in range(3)]
  assert (out / "grid.png").exists()
