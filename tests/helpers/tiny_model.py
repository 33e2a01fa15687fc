"""A tiny regression MLP, its data and train step: shared by the sharding, two-process and train-loop tests.

Also runnable as the trainer of the interruption test:
  python tests/helpers/tiny_model.py WORKDIR NUM_STEPS [--sleep S] [--width W]
prints "STEP n" after every step (so a test can signal it mid-run), "PREEMPTED n" when SIGTERM stopped it, and
writes WORKDIR/final_params.npz at the end.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from t2i_common import config as config_lib  # noqa: E402
from t2i_common import train_loop  # noqa: E402

IN_DIM, OUT_DIM = 16, 8


class MLP(nn.Module):
  width: int = 64

  @nn.compact
  def __call__(self, x):
    x = nn.gelu(nn.Dense(self.width)(x))
    x = nn.gelu(nn.Dense(self.width)(x))
    return nn.Dense(OUT_DIM)(x)


def make_data(n: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, IN_DIM)).astype(np.float32)
  w = rng.normal(size=(IN_DIM, OUT_DIM)).astype(np.float32)
  return {"x": x, "y": np.tanh(x @ w).astype(np.float32)}


def make_tx() -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))


def init_state(rng: jax.Array, width: int = 64, ema: bool = True) -> train_loop.TrainState:
  params = MLP(width).init(jax.random.fold_in(rng, 1), jnp.zeros((1, IN_DIM)))["params"]
  return train_loop.TrainState.create(params=params, tx=make_tx(), rng=rng, ema=ema)


def train_step(state: train_loop.TrainState, batch, width: int = 64):
  # Dropout-like noise from the per-step key, so resumed runs must reproduce the RNG stream too.
  noise = 0.01 * jax.random.normal(state.step_rng(), batch["x"].shape)

  def loss_fn(params):
    pred = MLP(width).apply({"params": params}, batch["x"] + noise)
    return jnp.mean((pred - batch["y"]) ** 2)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  new_state = state.apply_gradients(grads, ema_decay=0.9)
  return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}


def local_rows(mesh, global_size: int) -> np.ndarray:
  """Indices of the global batch rows that this process's devices hold (what it must load itself)."""
  from t2i_common import parallel
  index_map = parallel.batch_sharding(mesh).addressable_devices_indices_map((global_size,))
  starts = sorted({idx[0].start or 0 for idx in index_map.values()})
  per_device = global_size // mesh.size
  return np.concatenate([np.arange(s, s + per_device) for s in starts])


def sharded_steps(mesh, steps: int = 3, batch_size: int = 16):
  """`steps` jitted, donated steps on `mesh` from the same global batches whatever the process layout;
  returns (state, final params gathered to numpy on every process, last loss)."""
  from jax.experimental import multihost_utils
  from t2i_common import parallel
  state, shardings = parallel.sharded_init(init_state, mesh, jax.random.key(0), min_size=256)
  data = make_data(batch_size * steps, seed=1)
  rows = local_rows(mesh, batch_size)
  step = jax.jit(train_step, out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=0)
  for i in range(steps):
    local = {k: v[batch_size * i:batch_size * (i + 1)][rows] for k, v in data.items()}
    state, metrics = step(state, parallel.global_batch(local, mesh))
  params = multihost_utils.process_allgather(state.params, tiled=True)
  return state, jax.tree.map(np.asarray, params), float(np.asarray(metrics["loss"].addressable_data(0)))


def tiny_config(num_steps: int = 12, width: int = 64, data: int = 4, fsdp: int = 2) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict({
      "seed": 0,
      "mesh": config_lib.mesh_config(data=data, fsdp=fsdp),
      "distributed": config_lib.distributed_config(),
      "data": {"name": "tiny", "num_examples": 64, "data_dir": ""},
      "model": {"width": width},
      "train": {"batch_size": 16, "num_steps": num_steps},
      "checkpoint": config_lib.checkpoint_config(every_steps=4, keep=2),
      "logging": config_lib.logging_config(every_steps=2),
  })
  config.mesh.min_fsdp_size = 256  # small enough that the tiny kernels are really split over fsdp
  config.logging.progress_bar = False
  return config


def make_loader(config):
  """A grain iterator over an in-memory data set: shuffled, repeated, batched; checkpointable position."""
  import grain
  data = make_data(int(config.data.num_examples))
  records = [{k: v[i] for k, v in data.items()} for i in range(len(data["x"]))]
  dataset = (grain.MapDataset.source(records).shuffle(seed=int(config.seed)).repeat(None)
             .batch(int(config.train.batch_size)))
  return iter(dataset.to_iter_dataset())


class PrintStep:
  """Hook: prints the step (the interruption test waits for it) and slows the run so signals land mid-run."""

  def __init__(self, sleep: float):
    self.every_steps, self.sleep = 1, sleep

  def __call__(self, state, step, writer):
    print(f"STEP {step}", flush=True)
    time.sleep(self.sleep)


def run(workdir: str, config, hooks=()):
  width = int(config.model.width)
  loop = train_loop.TrainLoop(
      config, workdir, init_state=lambda rng: init_state(rng, width),
      train_step=lambda s, b: train_step(s, b, width), loader=make_loader(config), hooks=hooks)
  state = loop.run()
  return loop, state


def flat_params(state) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_flatten_with_path((state.params, state.ema_params, state.opt_state))[0]
  return {jax.tree_util.keystr(path): np.asarray(jax.device_get(leaf)) for path, leaf in leaves}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("workdir")
  parser.add_argument("num_steps", type=int)
  parser.add_argument("--sleep", type=float, default=0.0)
  parser.add_argument("--width", type=int, default=64)
  parser.add_argument("--checkpoint-every", type=int, default=4)
  args = parser.parse_args(argv)
  if os.environ.get("TINY_MODEL_CACHE_DIR"):
    # The interruption test restarts this trainer several times: reuse the first run's compiled step.
    jax.config.update("jax_compilation_cache_dir", os.environ["TINY_MODEL_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  config = tiny_config(args.num_steps, args.width)
  config.checkpoint.every_steps = args.checkpoint_every
  loop, state = run(args.workdir, config, hooks=[PrintStep(args.sleep)])
  if loop.preempted:
    print(f"PREEMPTED {loop.step}", flush=True)
    return 0
  np.savez(os.path.join(args.workdir, "final_params.npz"), **flat_params(state))
  print("DONE", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
