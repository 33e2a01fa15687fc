"""One process of the real two-process jax.distributed test (CPU devices, gloo collectives, loopback).

  python tests/helpers/two_process_worker.py PROCESS_ID NUM_PROCESSES PORT OUTDIR
Runs the tiny MLP's sharded steps on a (data=4, fsdp=2) mesh spanning both processes, each process feeding only
its own rows of the global batch; saves and restores a checkpoint with a per-process data position; writes
OUTDIR/result_<id>.json (and process 0 the gathered params as OUTDIR/params.npz). Then steps through a
PreemptionGuard until it says stop (the test sends SIGTERM to one of the processes after "GUARD READY").
"""
import json
import os
import sys
import time

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process CPU all-reduce

import numpy as np  # noqa: E402

import tiny_model  # noqa: E402  (same directory; also puts the repo root on sys.path)
from t2i_common import parallel  # noqa: E402
from t2i_common.checkpoint import Checkpointer, PreemptionGuard  # noqa: E402


def _local(x: jax.Array) -> np.ndarray:
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  return np.asarray(x.addressable_data(0))


def main(process_id: int, num_processes: int, port: int, outdir: str) -> None:
  how = parallel.initialize_distributed({"coordinator_address": f"127.0.0.1:{port}",
                                         "num_processes": num_processes, "process_id": process_id,
                                         "initialization_timeout": 60})
  mesh = parallel.create_mesh({"data": 4, "fsdp": 2})
  state, params, loss = tiny_model.sharded_steps(mesh, steps=3)
  result = {"how": how, "process_count": jax.process_count(), "device_count": jax.device_count(),
            "local_device_count": jax.local_device_count(), "loss": loss,
            "local_rows": tiny_model.local_rows(mesh, 16).tolist()}

  config = tiny_model.tiny_config()
  ckpt = Checkpointer(os.path.join(outdir, "work"), config, keep=1)
  ckpt.save(3, state, data_state={"next_index": 10 + process_id})
  ckpt.wait()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  restored, data_state = ckpt.restore(abstract)
  ckpt.close()
  same = jax.tree.map(lambda a, b: bool(np.array_equal(_local(a), _local(b))), state, restored)
  result["restore_equal"] = all(jax.tree.leaves(same))
  result["restored_sharding_equal"] = (restored.params["Dense_1"]["kernel"].sharding
                                       == state.params["Dense_1"]["kernel"].sharding)
  result["data_state"] = data_state
  # Preemption: the test sends SIGTERM to one process only; both must stop at the same step.
  result["stop_step"] = None
  with PreemptionGuard() as guard:
    print("GUARD READY", flush=True)
    for step in range(1, 600):
      if guard.should_stop(step):
        result["stop_step"] = step
        break
      time.sleep(0.05)

  if process_id == 0:
    np.savez(os.path.join(outdir, "params.npz"),
             **{jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]})
  with open(os.path.join(outdir, f"result_{process_id}.json"), "w") as f:
    json.dump(result, f)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
