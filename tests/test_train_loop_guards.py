"""The training loop's guards and outputs: NaN/inf stops without saving the bad state, resuming with an
incompatible config fails naming the keys (a longer num_steps is fine), metrics.jsonl and TensorBoard events,
hooks, and the TrainState/EMA helpers."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import tiny_model
from t2i_common import checkpoint, train_loop


class _NaNOnThirdBatch:
  """Wraps a checkpointable loader; the 3rd batch carries a NaN (a corrupt record makes the loss diverge)."""

  def __init__(self, loader):
    self.loader, self.count = loader, 0

  def __next__(self):
    batch = dict(next(self.loader))
    self.count += 1
    if self.count == 3:
      batch["x"] = batch["x"].copy()
      batch["x"][0, 0] = np.nan
    return batch

  def get_state(self):
    return self.loader.get_state()

  def set_state(self, state):
    self.loader.set_state(state)


class _Recorder:
  every_steps = 2

  def __init__(self):
    self.calls = []

  def __call__(self, state, step, writer):
    self.calls.append((step, int(state.step)))
    writer.write_scalars(step, {"hook/value": float(step)})


def test_nan_guard_names_metric_and_step_and_saves_nothing_bad(tmp_path):
  config = tiny_model.tiny_config(num_steps=8)
  config.checkpoint.every_steps = 2
  config.logging.every_steps = 4  # the NaN of step 3 is only fetched at step 4: it must still name step 3
  with pytest.raises(train_loop.NonFiniteError, match=r"'grad_norm' is nan at step 3.*last checkpoint: step 2"):
    train_loop.fit(config, str(tmp_path), init_state=tiny_model.init_state, train_step=tiny_model.train_step,
                   loader=_NaNOnThirdBatch(tiny_model.make_loader(config)))
  assert checkpoint.Checkpointer(tmp_path).all_steps() == [2]


def test_incompatible_resume_fails_and_longer_training_resumes(tmp_path):
  config = tiny_model.tiny_config(num_steps=4)
  hook = _Recorder()
  loop = train_loop.TrainLoop(config, str(tmp_path), init_state=tiny_model.init_state,
                              train_step=tiny_model.train_step, loader=tiny_model.make_loader(config), hooks=[hook])
  state = loop.run()
  assert int(state.step) == 4 and not loop.preempted and loop.compile_time_s > 0
  assert hook.calls == [(2, 2), (4, 4)]
  assert checkpoint.Checkpointer(tmp_path).all_steps() == [4]  # every 4 steps and the end

  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  logged = [r for r in records if "loss" in r]
  assert [r["step"] for r in logged] == [2, 4] and all(np.isfinite(r["loss"]) for r in logged)
  assert any("perf/compile_time_s" in r for r in records) and any("hook/value" in r for r in records)
  assert "perf/steps_per_sec" in logged[0] and "perf/examples_per_sec" in logged[0]
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))

  # A different model: refused, naming the config key and the mismatching arrays.
  wider = tiny_model.tiny_config(num_steps=6, width=32)
  with pytest.raises(checkpoint.IncompatibleCheckpointError, match=r"model\.width: saved 64, now 32") as info:
    tiny_model.run(str(tmp_path), wider)
  assert "params/Dense_0/kernel: saved float32[16, 64], now float32[16, 32]" in str(info.value)

  # Same model, but the data set changed shape: refused too; data_dir is allowed to move.
  other_data = tiny_model.tiny_config(num_steps=6)
  other_data.data.num_examples = 32
  other_data.data.data_dir = "/somewhere/else"
  with pytest.raises(checkpoint.IncompatibleCheckpointError, match=r"data\.num_examples: saved 64, now 32") as info:
    tiny_model.run(str(tmp_path), other_data)
  assert "data_dir" not in str(info.value)

  # Training longer with the same model and data resumes from step 4.
  longer = tiny_model.tiny_config(num_steps=6)
  longer.optimizer = {"note": "other sections may change"}
  loop = train_loop.TrainLoop(longer, str(tmp_path), init_state=tiny_model.init_state,
                              train_step=tiny_model.train_step, loader=tiny_model.make_loader(longer))
  state = loop.run()
  assert (loop.start_step, int(state.step)) == (4, 6)


def test_state_structure_mismatch_is_reported(tmp_path):
  state = {"params": {"w": jnp.ones((4, 4)), "b": jnp.zeros(4)}, "step": jnp.int32(1)}
  ckpt = checkpoint.Checkpointer(tmp_path, None, async_save=False)
  ckpt.save(1, state)
  other = {"params": {"w": jax.ShapeDtypeStruct((4, 5), jnp.float32), "extra": jax.ShapeDtypeStruct((2,), jnp.float32)},
           "step": jax.ShapeDtypeStruct((), jnp.int32)}
  with pytest.raises(checkpoint.IncompatibleCheckpointError) as info:
    ckpt.restore(other)
  message = str(info.value)
  assert "params/w: saved float32[4, 4], now float32[4, 5]" in message
  assert "params/b: in the checkpoint, not in the current state" in message
  assert "params/extra: in the current state, not in the checkpoint" in message
  restored, data = ckpt.restore(jax.eval_shape(lambda: state))
  assert data is None and int(restored["step"]) == 1
  ckpt.close()


def test_config_differences_sections():
  saved = {"model": {"dim": 32, "heads": 4}, "data": {"name": "shapes", "data_dir": "/a"}, "train": {"num_steps": 10}}
  now = {"model": {"dim": 64}, "data": {"name": "shapes", "data_dir": "/b"}, "train": {"num_steps": 99}}
  assert checkpoint.config_differences(saved, now) == ["model.dim: saved 32, now 64",
                                                       "model.heads: saved 4, now (absent)"]


def test_preemption_guard_single_process():
  import signal
  with checkpoint.PreemptionGuard() as guard:
    assert not guard.should_stop(1)
    signal.raise_signal(signal.SIGTERM)  # handled: sets the flag instead of killing the test process
    assert guard.should_stop(2)
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_train_state_and_ema():
  tx = tiny_model.make_tx()
  params = {"w": jnp.ones(3)}
  state = train_loop.TrainState.create(params=params, tx=tx, rng=jax.random.key(0), ema=True)
  with pytest.raises(ValueError, match="ema_decay"):
    state.apply_gradients({"w": jnp.ones(3)})
  new = state.apply_gradients({"w": jnp.ones(3)}, ema_decay=0.5)
  assert int(new.step) == 1
  np.testing.assert_allclose(new.ema_params["w"], 0.5 * 1.0 + 0.5 * np.asarray(new.params["w"]), rtol=1e-6)
  assert not np.array_equal(jax.random.key_data(state.step_rng()), jax.random.key_data(new.step_rng()))
  ema = train_loop.ema_update({"a": jnp.zeros(2, jnp.bfloat16)}, {"a": jnp.ones(2)}, 0.9)
  assert ema["a"].dtype == jnp.bfloat16 and np.allclose(np.asarray(ema["a"], np.float32), 0.1, atol=1e-2)


def test_restore_onto_another_mesh(tmp_path):
  """A checkpoint written on a (data=4, fsdp=2) mesh restores onto (data=2, fsdp=4) with the new shardings."""
  from t2i_common import parallel
  old_mesh = parallel.create_mesh({"data": 4, "fsdp": 2})
  state, _ = parallel.sharded_init(tiny_model.init_state, old_mesh, jax.random.key(3), min_size=256)
  ckpt = checkpoint.Checkpointer(tmp_path, tiny_model.tiny_config())
  ckpt.save(7, state, data_state={"next_index": 5})
  ckpt.wait()
  new_mesh = parallel.create_mesh({"data": 2, "fsdp": 4})
  abstract = jax.eval_shape(tiny_model.init_state, jax.random.key(0))
  target = parallel.abstract_with_shardings(abstract, parallel.param_shardings(abstract, new_mesh, 256))
  restored, data_state = ckpt.restore(target)
  ckpt.close()
  kernel = restored.params["Dense_1"]["kernel"]
  assert kernel.sharding.mesh.shape["fsdp"] == 4 and {s.data.shape for s in kernel.addressable_shards} == {(64, 16)}
  np.testing.assert_array_equal(np.asarray(kernel), np.asarray(state.params["Dense_1"]["kernel"]))
  np.testing.assert_array_equal(jax.random.key_data(restored.rng), jax.random.key_data(state.rng))
  assert data_state == {"next_index": 5}
