"""The training loop every trainer shares (DAMSM pretraining, AttnGAN, VAE and UNet diffusion).

A trainer supplies three things and calls `fit`:
- `init_state(rng) -> state`: any pytree (e.g. `TrainState` below, or a GAN's own state with two optimizers);
- `train_step(state, batch) -> (state, metrics)`: pure, jittable; takes per-step randomness from
  `fold_in(rng, step)` (`TrainState.step_rng()`), returns scalar metrics (a "loss" and ideally a "grad_norm");
- `loader`: an iterator of numpy batch dicts with `get_state()` / `set_state()` (t2i_common.data.loader, or any
  grain DatasetIterator).

`fit` then: creates the mesh; restores the latest checkpoint of `workdir` (state into its sharded abstract form,
loader position) or initialises the state sharded; compiles the step ahead of time (donated state, explicit
shardings; compile time reported apart from step time); runs to config.train.num_steps with a progress bar;
writes averaged metrics every config.logging.every_steps; runs hooks (`every_steps`, `__call__(state, step,
writer)`); checkpoints every config.checkpoint.every_steps, on SIGTERM (then returns early) and at the end.

NaN/inf guard: metrics are fetched from the devices only at log/hook/checkpoint steps (fetching every step would
stall the asynchronous dispatch); before anything is saved, every metric of every step since the last check must
be finite, otherwise `NonFiniteError` names the metric and the first bad step and nothing is saved.

Steps count updates: the checkpoint of step k holds the state after k calls of train_step.
Multi-host: call `parallel.initialize_distributed(config.distributed)` at the top of main (fit calls it too,
which is enough only if nothing touched JAX before).
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from t2i_common import parallel
from t2i_common.checkpoint import Checkpointer, PreemptionGuard
from t2i_common.logging import MetricWriter, progress

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
  """A training metric (loss, gradient norm) became NaN or infinite."""


class Hook(Protocol):
  """Runs every `every_steps` steps (and after the last step unless `at_end = False`)."""
  every_steps: int

  def __call__(self, state: Any, step: int, writer: MetricWriter) -> None:
    ...


# ----------------------------------------------------------------------------------------------------------------
# A generic train state.

@flax.struct.dataclass
class TrainState:
  """step, params, optimizer state and RNG; optional EMA parameters and batch statistics.

  `tx` is static (not saved: it is code, rebuilt from the config on resume).
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  ema_params: Any = None
  batch_stats: Any = None
  tx: optax.GradientTransformation | None = flax.struct.field(pytree_node=False, default=None)

  @classmethod
  def create(cls, *, params: Any, tx: optax.GradientTransformation, rng: jax.Array, ema: bool = False,
             batch_stats: Any = None) -> "TrainState":
    ema_params = jax.tree.map(jnp.copy, params) if ema else None
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng,
               ema_params=ema_params, batch_stats=batch_stats, tx=tx)

  def step_rng(self) -> jax.Array:
    """This step's key: fold_in(rng, step), so a resumed run draws the same randomness."""
    return jax.random.fold_in(self.rng, self.step)

  def apply_gradients(self, grads: Any, *, batch_stats: Any = None, ema_decay: float | None = None) -> "TrainState":
    """One optimizer update; also updates the EMA (if kept; `ema_decay` required then) and batch statistics."""
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    params = optax.apply_updates(self.params, updates)
    ema_params = self.ema_params
    if ema_params is not None:
      if ema_decay is None:
        raise ValueError("this TrainState keeps EMA parameters: pass ema_decay to apply_gradients.")
      ema_params = ema_update(ema_params, params, ema_decay)
    return self.replace(step=self.step + 1, params=params, opt_state=opt_state, ema_params=ema_params,
                        batch_stats=self.batch_stats if batch_stats is None else batch_stats)


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
  """EMA decay with warm-up, min(decay, (1 + step) / (10 + step)): with a fixed 0.999 a run of a few thousand
  steps would still average in its random initialisation."""
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema: Any, params: Any, decay: float | jax.Array) -> Any:
  """ema <- decay * ema + (1 - decay) * params, leaf by leaf (in each leaf's dtype)."""
  return jax.tree.map(lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype), ema, params)


# ----------------------------------------------------------------------------------------------------------------

def _get(config: Any, path: str, default: Any) -> Any:
  node = config
  for part in path.split("."):
    try:
      node = node[part]
    except (KeyError, AttributeError, TypeError):
      return default
  return default if node is None else node


class TrainLoop:
  """`fit` as an object: after `run()`, `preempted`, `start_step`, `step` and `compile_time_s` tell what happened."""

  def __init__(self, config: Any, workdir: str, *,
               init_state: Callable[[jax.Array], Any],
               train_step: Callable[[Any, Mapping[str, jax.Array]], tuple[Any, Mapping[str, jax.Array]]],
               loader: Iterator[Mapping[str, np.ndarray]],
               mesh: jax.sharding.Mesh | None = None,
               state_shardings: Callable[[Any, jax.sharding.Mesh], Any] | None = None,
               hooks: Sequence[Hook] = (),
               batch_to_device: Callable[[Mapping[str, np.ndarray], jax.sharding.Mesh], Any] | None = None,
               finite_metrics: Sequence[str] | None = None,
               writer: MetricWriter | None = None,
               checkpointer: Checkpointer | None = None):
    self.config, self.workdir = config, workdir
    self.init_state, self.train_step, self.loader = init_state, train_step, loader
    self.hooks = tuple(hooks)
    for hook in self.hooks:
      if int(getattr(hook, "every_steps", 0)) <= 0:
        raise ValueError(f"hook {hook!r} needs a positive integer attribute every_steps.")
    self.batch_to_device = batch_to_device or parallel.global_batch
    self.finite_metrics = None if finite_metrics is None else tuple(finite_metrics)
    parallel.initialize_distributed(_get(config, "distributed", None))
    self.mesh = mesh if mesh is not None else parallel.create_mesh(_get(config, "mesh", None))
    min_size = int(_get(config, "mesh.min_fsdp_size", parallel.DEFAULT_MIN_FSDP_SIZE))
    self.state_shardings = state_shardings or (lambda tree, m: parallel.param_shardings(tree, m, min_size))
    self.num_steps = int(config.train.num_steps)
    self.log_every = int(_get(config, "logging.every_steps", 50))
    self.ckpt_every = int(_get(config, "checkpoint.every_steps", 1000))
    self.batch_size = _get(config, "train.batch_size", None)
    self.writer = writer or MetricWriter(workdir)
    self.checkpointer = checkpointer or Checkpointer(
        workdir, config, keep=int(_get(config, "checkpoint.keep", 3)),
        async_save=bool(_get(config, "checkpoint.async_save", True)))
    self.preempted = False
    self.start_step = self.step = 0
    self.compile_time_s = float("nan")
    self.last_saved_step: int | None = None

  # -- set-up ------------------------------------------------------------------------------------------------

  def _initial_state(self) -> tuple[Any, Any]:
    rng = jax.random.key(int(_get(self.config, "seed", 0)))
    abstract = jax.eval_shape(self.init_state, rng)
    shardings = self.state_shardings(abstract, self.mesh)
    latest = self.checkpointer.latest_step()
    if latest is None:
      state = jax.jit(self.init_state, out_shardings=shardings,
                      compiler_options=parallel.run_once_compiler_options())(rng)
      self.start_step = 0
      log.info("initialised a new state in %s", self.workdir)
    else:
      target = parallel.abstract_with_shardings(abstract, shardings)
      state, data_state = self.checkpointer.restore(target, latest)
      if data_state is not None and hasattr(self.loader, "set_state"):
        self.loader.set_state(data_state)
      self.start_step = self.last_saved_step = int(latest)
      log.info("resumed from step %d of %s", latest, self.workdir)
    return state, shardings

  def _compile(self, state: Any, batch: Any, shardings: Any) -> Callable:
    batch_shardings = jax.tree.map(lambda x: x.sharding, batch)
    # train.fast_compile (tests, tiny configs): XLA's cheap CPU settings; compile time dominates tiny runs.
    options = parallel.run_once_compiler_options() if _get(self.config, "train.fast_compile", False) else None
    jitted = jax.jit(self.train_step, in_shardings=(shardings, batch_shardings),
                     out_shardings=(shardings, parallel.replicated(self.mesh)), donate_argnums=0,
                     compiler_options=options)
    start = time.perf_counter()
    compiled = jitted.lower(state, batch).compile()
    self.compile_time_s = time.perf_counter() - start
    log.info("train_step compiled in %.2f s", self.compile_time_s)
    self.writer.write_scalars(self.start_step, {"perf/compile_time_s": self.compile_time_s})
    return compiled

  # -- metrics -----------------------------------------------------------------------------------------------

  def _check_finite(self, pending: list[tuple[int, Any]]) -> list[tuple[int, dict[str, float]]]:
    """Fetches the pending metrics; raises NonFiniteError at the first non-finite guarded value."""
    fetched = jax.device_get(pending)
    out = []
    for step, metrics in fetched:
      values = {k: np.asarray(v, np.float64) for k, v in metrics.items()}
      for name, value in values.items():
        guarded = self.finite_metrics is None or name in self.finite_metrics
        if guarded and not np.all(np.isfinite(value)):
          saved = "none" if self.last_saved_step is None else f"step {self.last_saved_step}"
          raise NonFiniteError(
              f"metric {name!r} is {value.tolist()} at step {step}: training diverged. The state after this step "
              f"was not saved (last checkpoint: {saved}). Lower the learning rate, enable gradient clipping, or "
              f"check the batch data of that step.")
      out.append((step, values))
    return out

  def _write_metrics(self, step: int, fetched: list[tuple[int, dict[str, np.ndarray]]], elapsed: float,
                     bar: Any) -> None:
    if not fetched:
      return
    # A metric may come with some steps only (e.g. a lazily added regulariser): averaged over those.
    names = dict.fromkeys(name for _, m in fetched for name in m)
    scalars = {name: float(np.mean([np.mean(m[name]) for _, m in fetched if name in m])) for name in names}
    steps_per_sec = len(fetched) / elapsed if elapsed > 0 else float("nan")
    perf = {"perf/steps_per_sec": steps_per_sec}
    if self.batch_size:
      perf["perf/examples_per_sec"] = steps_per_sec * int(self.batch_size)
    self.writer.write_scalars(step, {**scalars, **perf})
    bar.set_postfix(**{k: v for k, v in scalars.items() if "loss" in k})

  # -- loop --------------------------------------------------------------------------------------------------

  def run(self) -> Any:
    state, shardings = self._initial_state()
    self.step = self.start_step
    if self.step >= self.num_steps:
      log.info("checkpoint step %d >= train.num_steps %d: nothing to do", self.step, self.num_steps)
      self._close()
      return state
    bar = progress(self.num_steps, desc="train", initial=self.step,
                   enabled=bool(_get(self.config, "logging.progress_bar", True)))
    step_fn = None
    pending: list[tuple[int, Any]] = []  # device metrics not yet fetched
    window: list[tuple[int, dict[str, np.ndarray]]] = []  # fetched metrics not yet written
    window_time = 0.0  # training time of `window`, without compilation, hooks and checkpointing
    segment_start = time.perf_counter()
    try:
      with jax.set_mesh(self.mesh), PreemptionGuard() as guard:
        while self.step < self.num_steps:
          try:
            local_batch = next(self.loader)
          except StopIteration:
            raise RuntimeError(
                f"the loader ran out of batches after step {self.step}, before train.num_steps={self.num_steps}; "
                f"use a repeating loader (num_epochs=None) or fewer steps.") from None
          batch = self.batch_to_device(local_batch, self.mesh)
          if step_fn is None:
            step_fn = self._compile(state, batch, shardings)
            bar.restart_clock()
            segment_start = time.perf_counter()
          state, metrics = step_fn(state, batch)
          self.step += 1
          pending.append((self.step, metrics))
          bar.update(1)
          stop = guard.should_stop(self.step)
          last = self.step == self.num_steps
          log_now = self.step % self.log_every == 0 or last or stop
          save_now = self.step % self.ckpt_every == 0 or last or stop
          due = [h for h in self.hooks if self.step % h.every_steps == 0 or (last and getattr(h, "at_end", True))]
          if not (log_now or save_now or due):
            continue
          window += self._check_finite(pending)
          window_time += time.perf_counter() - segment_start
          pending = []
          if log_now:
            self._write_metrics(self.step, window, window_time, bar)
            window, window_time = [], 0.0
          for hook in due:
            hook(state, self.step, self.writer)
          if save_now:
            data_state = self.loader.get_state() if hasattr(self.loader, "get_state") else None
            self.checkpointer.save(self.step, state, data_state)
            self.last_saved_step = self.step
          segment_start = time.perf_counter()
          if stop:
            self.preempted = True
            log.warning("stop requested (SIGTERM): saved step %d, exiting the training loop", self.step)
            break
    finally:
      bar.close()
      self._close()
    return state

  def _close(self) -> None:
    self.checkpointer.close()  # waits for the asynchronous save to finish
    self.writer.close()


def fit(config: Any, workdir: str, **kwargs: Any) -> Any:
  """Trains to config.train.num_steps (resuming from `workdir`); returns the final state. See `TrainLoop`."""
  return TrainLoop(config, workdir, **kwargs).run()
