"""Mesh construction, parameter sharding rules, sharded init, global batches, and a sharded train step equal
to the single-device one (8 fake CPU devices from conftest)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from helpers import tiny_model
from t2i_common import parallel


def test_mesh_sizes_and_fill():
  assert dict(parallel.create_mesh({"data": 4, "fsdp": 2}).shape) == {"data": 4, "fsdp": 2}
  assert dict(parallel.create_mesh({"data": -1, "fsdp": 2}).shape) == {"data": 4, "fsdp": 2}
  assert dict(parallel.create_mesh({"data": 2, "fsdp": -1}).shape) == {"data": 2, "fsdp": 4}
  assert dict(parallel.create_mesh(None).shape) == {"data": 8, "fsdp": 1}
  mesh = parallel.create_mesh({"data": 1, "fsdp": 1}, devices=jax.devices()[:1])
  assert mesh.size == 1


@pytest.mark.parametrize("data,fsdp,message", [
    (3, 3, r"jax.device_count\(\) is 8"),
    (-1, -1, "at most one axis"),
    (-1, 3, "not divisible by 3"),
    (0, 8, "must be positive"),
])
def test_mesh_errors(data, fsdp, message):
  with pytest.raises(parallel.MeshError, match=message):
    parallel.create_mesh({"data": data, "fsdp": fsdp})


def test_param_sharding_rules():
  mesh = parallel.create_mesh({"data": 2, "fsdp": 4})
  tree = {
      "small": jax.ShapeDtypeStruct((4, 4), jnp.float32),
      "kernel": jax.ShapeDtypeStruct((64, 128), jnp.float32),  # both dims divisible: the larger one
      "conv": jax.ShapeDtypeStruct((3, 3, 64, 32), jnp.float32),  # largest divisible dim is 64
      "odd": jax.ShapeDtypeStruct((33, 35), jnp.float32),  # nothing divisible by 4: replicated
      "tie": jax.ShapeDtypeStruct((64, 64), jnp.float32),  # tie: the later (output) dimension
      "scalar": jax.ShapeDtypeStruct((), jnp.int32),
      "key": jax.eval_shape(lambda: jax.random.key(0)),
  }
  specs = jax.tree.map(lambda s: s.spec, parallel.param_shardings(tree, mesh, min_size=1000))
  assert specs == {"small": P(), "kernel": P(None, "fsdp"), "conv": P(None, None, "fsdp", None),
                   "odd": P(), "tie": P(None, "fsdp"), "scalar": P(), "key": P()}
  # fsdp=1 is plain data parallelism: everything replicated.
  dp = parallel.param_shardings(tree, parallel.create_mesh({"data": 8, "fsdp": 1}), min_size=1)
  assert all(s.spec == P() for s in jax.tree.leaves(dp))


def test_sharded_init_splits_large_params():
  mesh = parallel.create_mesh({"data": 4, "fsdp": 2})
  state, shardings = parallel.sharded_init(tiny_model.init_state, mesh, jax.random.key(0), min_size=256)
  kernel = state.params["Dense_1"]["kernel"]  # 64x64 = 4096 >= 256: split in two along fsdp
  assert kernel.sharding.spec == P(None, "fsdp")
  assert {s.data.shape for s in kernel.addressable_shards} == {(64, 32)}
  assert state.params["Dense_2"]["bias"].sharding.spec == P()  # 8 elements: replicated
  assert state.opt_state[1][0].mu["Dense_1"]["kernel"].sharding.spec == P(None, "fsdp")
  assert jax.tree.structure(shardings) == jax.tree.structure(state)


def test_global_batch_shapes_and_errors():
  mesh = parallel.create_mesh({"data": 4, "fsdp": 2})
  batch = {"x": np.arange(16 * 3, dtype=np.float32).reshape(16, 3), "caption": np.array(["a"] * 16, object),
           "mask": np.ones(16, bool)}
  out = parallel.global_batch(batch, mesh)
  assert set(out) == {"x", "mask"}  # strings dropped
  assert out["x"].shape == (16, 3) and out["x"].sharding.spec == P(("data", "fsdp"))
  assert {s.data.shape for s in out["x"].addressable_shards} == {(2, 3)}
  np.testing.assert_array_equal(np.asarray(out["x"]), batch["x"])
  with pytest.raises(ValueError, match="divisible by the 8 devices"):
    parallel.global_batch({"x": np.zeros((12, 3), np.float32)}, mesh)


def test_initialize_distributed_single_process_and_errors():
  assert parallel.initialize_distributed(None) in ("single", "already")
  with pytest.raises(ValueError, match="num_processes"):
    parallel.initialize_distributed({"coordinator_address": "127.0.0.1:1234", "num_processes": 0,
                                     "process_id": -1})
  jax.devices()  # backends started: too late to join a job, which must fail loudly rather than run alone
  with pytest.raises(RuntimeError, match="before any other JAX call"):
    parallel.initialize_distributed({"coordinator_address": "127.0.0.1:1234", "num_processes": 2,
                                     "process_id": 0})


def _train(mesh):
  _, params, loss = tiny_model.sharded_steps(mesh, steps=3)
  return params, loss


def test_sharded_step_equals_single_device():
  reference, ref_loss = _train(parallel.create_mesh({"data": 1, "fsdp": 1}, devices=jax.devices()[:1]))
  for data, fsdp in ((4, 2), (8, 1)):
    params, loss = _train(parallel.create_mesh({"data": data, "fsdp": fsdp}))
    errors = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), params, reference))
    print(f"mesh data={data} fsdp={fsdp}: max |param - single-device param| = {max(errors):.2e}")
    assert max(errors) < 1e-6, (data, fsdp, max(errors))
    assert abs(loss - ref_loss) < 1e-6
