"""End-to-end test of `python -m diffusion_jax.sample` on a tiny folder (bfloat16, a few steps)."""
import os

import numpy as np
import pytest

pytest.importorskip("torch", reason="the tiny SD folder is written with PyTorch")
pytest.importorskip("diffusers", reason="the tiny SD folder is written with diffusers")
pytest.importorskip("transformers", reason="the tiny SD folder needs transformers")

import jax  # noqa: E402
from PIL import Image  # noqa: E402

from diffusion_fixtures import tiny_sd_reference, write_tiny_sd  # noqa: E402,F401
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


def test_cli_attend_and_excite_with_attention_pictures(tmp_path, capsys, tiny_sd_reference):
  """--subjects runs Attend-and-Excite; --save-attention adds the same seed without it and one picture per image
  (image and every subject's map at the chosen steps, both rows). The smallest folder (diffusers' A&E test
  UNet) keeps the gradient pass's compile short."""
  folder = tiny_sd_reference
  out = tmp_path / "out"
  sample.main(["--pretrained", folder, "--prompt", "a cat and a frog", "--seeds", "0", "--steps", "2",
               "--subjects", "cat,frog", "--max-iter-to-alter", "2", "--thresholds", "0:0.5",
               "--max-refinement-steps", "2", "--scale-factor", "1000", "--save-attention", "--attention-steps",
               "0,1", "--out", str(out)])
  text = capsys.readouterr().out
  assert "Attend-and-Excite: 2 refinement iterations" in text and "attention picture" in text
  assert sorted(os.listdir(out)) == ["00_0.png", "attention_00_0.png", "grid.png", "grid_plain.png"]
  with_ae = np.asarray(Image.open(out / "00_0.png")).astype(int)
  plain = np.asarray(Image.open(out / "grid_plain.png"))
  pic = np.asarray(Image.open(out / "attention_00_0.png"))
  # 2 rows (plain, A&E) x (image + 2 steps x 2 words) cells of at least 128 px
  assert pic.shape[1] >= 5 * 128 and pic.shape[0] >= 2 * 128
  assert plain.shape[0] > 64 and with_ae.shape == (64, 64, 3)


@pytest.mark.parametrize("argv,match", [
    (["--save-attention"], "needs --subjects"),
    (["--subjects", "dog"], "'dog' is not in the prompt"),
])
def test_cli_attend_and_excite_bad_arguments(tmp_path, argv, match, tiny_sd_reference):
  folder = tiny_sd_reference
  with pytest.raises(SystemExit, match=match):
    sample.main(["--pretrained", folder, "--prompt", "a cat", "--out", str(tmp_path / "o"), "--steps", "1"] + argv)


@pytest.mark.parametrize("argv,match", [
    (["--thresholds", "0=0.5"], "thresholds"),
    (["--token-indices", "2,x"], "token-indices"),
    (["--attn-res", "16y16"], "attn-res"),
])
def test_cli_attend_and_excite_unparsable(tmp_path, argv, match, capsys):
  with pytest.raises(SystemExit):
    sample.main(["--pretrained", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / "o")] + argv)
  assert match in capsys.readouterr().err
