"""Smoke tests of the benchmark scripts: their quick paths run end to end and report what they claim to measure.

benchmarks/attngan_train_vs_torch.py --quick on the tiny AttnGAN config (batch 4: a first and one timed
iteration per side, each side in its own subprocess), and the shared measuring helper's peak memory of a child
process (benchmarks/_measure.py).
"""
import json
import os
import sys

import pytest

pytest.importorskip("torch", reason="the benchmarks compare against PyTorch (the 'parity' extra)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import _measure  # noqa: E402
import attngan_train_vs_torch as gan_bench  # noqa: E402


def test_attngan_train_vs_torch_quick_tiny(tmp_path, capsys):
  out = tmp_path / "figures" / "gan.json"
  # one PyTorch thread: the smoke test must not depend on how loaded the machine's cores are
  gan_bench.main(["--configs", "tiny", "--quick", "--torch_threads", "1", "--out", str(out)])
  printed = capsys.readouterr().out
  figures = json.loads(out.read_text())
  assert figures["repeats"] == 1 and figures["wall_s"] > 0
  tiny = figures["configs"]["tiny"]
  assert tiny["batch_size"] == 4
  for side in ("torch", "attngan_jax"):
    r = tiny[side]
    assert len(r["iter_times_s"]) == 1 and r["iter_s"] == r["iter_times_s"][0] > 0
    assert r["d_s"] > 0 and r["g_s"] > 0 and r["first_iter_s"] > 0
    assert r["peak_rss_gib"] >= r["rss_after_imports_gib"] > 0
    # the same models on both sides: the attngan_shapes.py:tiny generator and its two discriminators
    assert (r["g_params"], r["d_params"]) == (15336, 49572)
    assert all(v == v for v in r["losses"].values()) and set(r["losses"]) == {"d_loss", "g_loss"}
  assert tiny["attngan_jax"]["compile_s"] > 0 and tiny["torch"]["compile_s"] is None
  assert tiny["torch"]["torch_threads"] == 1
  assert tiny["ratio_jax_torch"]["iter_s"] == pytest.approx(tiny["attngan_jax"]["iter_s"] / tiny["torch"]["iter_s"])
  assert "| tiny | 4 | torch | - |" in printed and "| tiny | 4 | attngan_jax |" in printed
  assert "| tiny | 4 | ratio jax/torch |" in printed and "PyTorch intra-op threads 1;" in printed


def test_attngan_train_vs_torch_rejects_bad_arguments():
  with pytest.raises(SystemExit, match="at least 2"):
    gan_bench.main(["--configs", "tiny", "--batch", "1"])
  with pytest.raises(SystemExit, match="unknown config.*'bird'.*tiny, shapes, birds"):
    gan_bench.main(["--configs", "bird"])


def test_child_peak_memory_is_its_own():
  """A child's peak is not floored at the parent's size (Linux carries ru_maxrss over fork and exec)."""
  ballast = bytearray(256 * 2**20)  # the parent touches 256 MiB more
  ballast[::4096] = b"\1" * len(ballast[::4096])
  with open("/proc/self/status") as f:  # resident now (the peak may be older and higher: earlier tests)
    resident = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 2**20
  assert resident >= 0.25 and _measure.peak_rss_gib() >= resident
  code = (f"import json, sys; sys.path.insert(0, {os.path.join(ROOT, 'benchmarks')!r}); import _measure; "
          "print(json.dumps({'peak': _measure.peak_rss_gib()}))")
  child = _measure.run_child([sys.executable, "-c", code], "child")
  assert 0 < child["peak"] < 0.1, child
  del ballast


@pytest.mark.parametrize("script", ["sample_vs_diffusers.py", "attend_excite_vs_diffusers.py",
                                    "attngan_train_vs_torch.py"])
def test_every_benchmark_script_starts(script):
  # Their full runs take minutes and are not in the suite; this catches a broken import or argument parser
  # (e.g. a helper renamed in benchmarks/_measure.py).
  import subprocess
  done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), "--help"], capture_output=True,
                        text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "usage:" in done.stdout
