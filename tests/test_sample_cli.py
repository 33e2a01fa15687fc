"""End-to-end test of `python -m diffusion_jax.sample` on a tiny folder (bfloat16, a few steps)."""
import os

import numpy as np
import pytest

pytest.importorskip("torch", reason="the tiny SD folder is written with PyTorch")
pytest.importorskip("diffusers", reason="the tiny SD folder is written with diffusers")
pytest.importorskip("transformers", reason="the tiny SD folder needs transformers")

import jax  # noqa: E402
from PIL import Image  # noqa: E402

from diffusion_fixtures import write_tiny_sd  # noqa: E402
from diffusion_jax import sample  # noqa: E402


@pytest.mark.parametrize("prompts,seeds,names", [
    # The same static shapes as tests/test_pipeline_parity.py's DDIM case (batch 2, 3 steps, guidance), so a
    # run in the same process reuses its compiled sampler.
    (["a red cat", "a blue dog"], "3", ["00_3.png", "01_3.png"]),
])
def test_cli_writes_images_and_grid(tmp_path, capsys, prompts, seeds, names):
  folder = write_tiny_sd(str(tmp_path), variant="sd1")
  out = tmp_path / "out"
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)  # compile time dominates at this size
  try:
    sample.main(["--pretrained", folder, "--seeds", seeds, "--steps", "3", "--scheduler", "ddim",
                 "--negative_prompt", "blurry", "--out", str(out)] + [a for p in prompts for a in ("--prompt", p)])
  finally:
    jax.config.update("jax_disable_most_optimizations", old)
  text = capsys.readouterr().out
  assert "compile" in text and "steps/s" in text and str(out.resolve()) in text
  assert sorted(os.listdir(out)) == names + ["grid.png"]
  images = [np.asarray(Image.open(out / n)) for n in names]
  assert all(im.shape == (32, 32, 3) for im in images)
  assert np.abs(images[0].astype(int) - images[1]).max() > 0  # different prompts, different images
  grid = np.asarray(Image.open(out / "grid.png"))
  assert grid.shape[0] > 64 and grid.shape[1] >= 32  # one row per prompt, one column per seed, captions


@pytest.mark.parametrize("argv,match", [
    (["--seeds", "a,b"], "seeds"),
    (["--steps", "0"], "steps"),
    (["--dtype", "int8"], "dtype"),
])
def test_cli_rejects_bad_arguments(tmp_path, argv, match, capsys):
  with pytest.raises(SystemExit):
    sample.main(["--pretrained", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / "o")] + argv)
  captured = capsys.readouterr()
  assert match in captured.err + captured.out


def test_cli_missing_folder(tmp_path):
  with pytest.raises(SystemExit, match="not a folder"):
    sample.main(["--pretrained", str(tmp_path / "nope"), "--prompt", "x", "--out", str(tmp_path / "o")])
