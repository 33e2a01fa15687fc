"""`python -m diffusion_jax.convert --from-single-file` as a user runs it: a fresh process, JAX choosing its
backend itself (no JAX_PLATFORMS), default logging: our lines are shown, JAX's TPU-discovery line is not."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch", reason="the single file is written from a tiny diffusers pipeline")
pytest.importorskip("diffusers", reason="the single file is written from a tiny diffusers pipeline")

from diffusion_fixtures import to_original_layout, write_single_file, write_tiny_sd  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_convert_cli_output(tmp_path):
  folder = write_tiny_sd(str(tmp_path), "sd1")
  path = write_single_file(str(tmp_path / "sd1.safetensors"), to_original_layout(folder))
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  out = tmp_path / "out"
  run = subprocess.run([sys.executable, "-m", "diffusion_jax.convert", "--from-single-file", path, "--config", folder,
                        "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr
  assert f"wrote {out}" in run.stdout
  assert f"diffusion_jax.single_file: reading {path}" in run.stderr  # our own log line stays
  assert "Unable to initialize backend" not in run.stderr, run.stderr
  assert sorted(os.listdir(out)) == ["model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae"]
  bad = subprocess.run([sys.executable, "-m", "diffusion_jax.convert", "--from-single-file", str(tmp_path / "no.ckpt"),
                        "--config", folder, "--out", str(tmp_path / "x")], env=env, capture_output=True, text=True,
                       timeout=300)
  assert bad.returncode == 1
  assert bad.stderr.strip().endswith(f"error: checkpoint '{tmp_path / 'no.ckpt'}' does not exist.")
