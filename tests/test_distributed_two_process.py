"""A real two-process jax.distributed run on loopback (4 CPU devices per process, gloo collectives): the global
batch built from per-process data and the cross-process gradient reduction give the single-process result;
checkpoints save and restore sharded state and each process's data position; SIGTERM to one process stops
both at the same step."""
import json
import os
import signal
import socket
import subprocess
import sys

import jax
import numpy as np

from helpers import tiny_model
from t2i_common import parallel

WORKER = os.path.join(os.path.dirname(__file__), "helpers", "two_process_worker.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_single_process(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, WORKER, str(i), "2", str(port), str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = ["", ""]
  try:
    for line in procs[1].stdout:  # preempt process 1 only, once both are in the guarded loop
      outputs[1] += line
      if line.startswith("GUARD READY"):
        procs[1].send_signal(signal.SIGTERM)
        break
    outputs[0] = procs[0].communicate(timeout=120)[0]
    outputs[1] += procs[1].communicate(timeout=120)[0]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for i, p in enumerate(procs):
    assert p.returncode == 0, f"process {i} failed:\n{outputs[i][-4000:]}"

  results = [json.loads((tmp_path / f"result_{i}.json").read_text()) for i in range(2)]
  for i, r in enumerate(results):
    assert r["how"] == "explicit"
    assert (r["process_count"], r["device_count"], r["local_device_count"]) == (2, 8, 4)
    assert r["restore_equal"] and r["restored_sharding_equal"]
    assert r["data_state"] == {"next_index": 10 + i}  # each process gets its own iterator position back
  # SIGTERM reached one process; JAX's preemption sync made both stop (and exit 0) at the same step.
  assert results[0]["stop_step"] is not None and results[0]["stop_step"] == results[1]["stop_step"]
  rows = sorted(results[0]["local_rows"] + results[1]["local_rows"])
  assert rows == list(range(16)) and not set(results[0]["local_rows"]) & set(results[1]["local_rows"])

  # The same steps in this single process (8 local devices, same mesh shape).
  _, reference, ref_loss = tiny_model.sharded_steps(parallel.create_mesh({"data": 4, "fsdp": 2}), steps=3)
  saved = np.load(tmp_path / "params.npz")
  flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(reference)[0]}
  assert set(saved.files) == set(flat)
  error = max(float(np.max(np.abs(saved[k] - flat[k]))) for k in flat)
  print(f"two-process vs single-process: max param difference {error:.2e}")
  assert error < 1e-6
  assert abs(results[0]["loss"] - ref_loss) < 1e-6 and results[0]["loss"] == results[1]["loss"]
