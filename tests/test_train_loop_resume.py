"""The shared training loop survives interruption: a run stopped by SIGTERM (clean exit, checkpoint at the step
it stopped), then killed with SIGKILL mid-run, then resumed, ends bit-identical to an uninterrupted run."""
import os
import signal
import subprocess
import sys

import numpy as np

from t2i_common.checkpoint import Checkpointer

TRAINER = os.path.join(os.path.dirname(__file__), "helpers", "tiny_model.py")
NUM_STEPS = 12


def _start(workdir):
  env = dict(os.environ, TINY_MODEL_CACHE_DIR=str(workdir.parent / "jax_cache"))
  return subprocess.Popen([sys.executable, TRAINER, str(workdir), str(NUM_STEPS), "--sleep", "0.1",
                           "--checkpoint-every", "6"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _run_until(proc, step: int, sig: int) -> list[str]:
  """Reads the trainer's output until it reports `step`, sends `sig`, returns all output lines."""
  lines = []
  for line in proc.stdout:
    lines.append(line.rstrip())
    if line.startswith("STEP ") and int(line.split()[1]) >= step:
      proc.send_signal(sig)
      break
  rest, _ = proc.communicate(timeout=120)
  return lines + rest.splitlines()


def _steps_seen(lines):
  return [int(l.split()[1]) for l in lines if l.startswith("STEP ")]


def test_sigterm_then_sigkill_then_resume_is_bit_identical(tmp_path):
  workdir = tmp_path / "interrupted"
  # 1) SIGTERM at step 2: the loop finishes the step, saves it and returns; the process exits 0.
  proc = _start(workdir)
  lines = _run_until(proc, 2, signal.SIGTERM)
  assert proc.returncode == 0, "\n".join(lines[-40:])
  stopped = [int(l.split()[1]) for l in lines if l.startswith("PREEMPTED ")]
  assert stopped, "\n".join(lines[-40:])
  assert 2 <= stopped[0] < 6
  assert Checkpointer(workdir).latest_step() == stopped[0]

  # 2) Resume, then SIGKILL mid-run, just after the asynchronous save of step 6 started: no chance to clean up.
  proc = _start(workdir)
  lines = _run_until(proc, 7, signal.SIGKILL)
  assert proc.returncode == -signal.SIGKILL
  assert _steps_seen(lines)[0] == stopped[0] + 1  # resumed after the saved step, not from scratch
  killed_latest = Checkpointer(workdir).latest_step()
  assert stopped[0] <= killed_latest < NUM_STEPS

  # 3) Resume to the end.
  proc = _start(workdir)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0 and "DONE" in out, out[-4000:]
  assert _steps_seen(out.splitlines())[0] == killed_latest + 1

  # Uninterrupted reference (a subprocess too: it reuses the compiled programs of the runs above).
  proc = _start(tmp_path / "reference")
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0 and "DONE" in out, out[-4000:]
  reference = np.load(tmp_path / "reference" / "final_params.npz")
  resumed = np.load(workdir / "final_params.npz")
  assert set(resumed.files) == set(reference.files) and len(reference.files) > 10
  for name in reference.files:
    np.testing.assert_array_equal(resumed[name], reference[name], err_msg=name)  # params, EMA, Adam: bit-equal
  assert Checkpointer(workdir).latest_step() == NUM_STEPS
