"""Device mesh, parameter sharding rules, sharded initialisation and global batches.

Everything runs as `jax.jit` over one 2-D mesh with axes ("data", "fsdp"):
- the batch is split over both axes (every device holds a different slice of examples);
- large parameters (and their optimizer state) are split along `fsdp` on their largest divisible dimension,
  small ones are replicated (splitting them costs more communication than the memory it saves).
With fsdp=1 this is plain data parallelism. Shardings are computed from `jax.eval_shape` of the init, and the
init is jitted with those `out_shardings`, so parameters are never materialised whole on one device.

Multi-host: call `initialize_distributed(config.distributed)` at the top of the entry point, before any other JAX
call. Each process then loads its own slice of the data (local batch = global batch / process_count) and
`global_batch` assembles the global arrays with `jax.make_array_from_process_local_data`.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable, Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")
BATCH_AXES = AXES  # the batch dimension is split over every device of the mesh
DEFAULT_MIN_FSDP_SIZE = 2**18

log = logging.getLogger(__name__)


class MeshError(ValueError):
  """A mesh shape that does not fit the available devices."""


# ----------------------------------------------------------------------------------------------------------------
# Multi-host initialisation.

def _on_cloud_tpu_vm() -> bool:
  # TPU VMs expose the chips as /dev/accel* (v2-v4) or /dev/vfio (v5+); the TPU runtime also sets these variables.
  # /dev/vfio alone also appears on GPU pass-through VMs, hence the libtpu check.
  import importlib.util
  has_libtpu = importlib.util.find_spec("libtpu") is not None
  return has_libtpu and (os.path.exists("/dev/accel0") or os.path.isdir("/dev/vfio")
                         or "TPU_WORKER_HOSTNAMES" in os.environ or "TPU_ACCELERATOR_TYPE" in os.environ)


def _under_slurm_srun() -> bool:
  # SLURM_STEP_ID is only set inside `srun`: a plain `sbatch` shell must not try to join a job of N processes.
  return ("SLURM_STEP_ID" in os.environ and "SLURM_JOB_ID" in os.environ
          and int(os.environ.get("SLURM_NTASKS", "1")) > 1)


def _backends_initialized() -> bool:
  from jax._src import xla_bridge  # no public equivalent; initialize() itself fails late otherwise
  return xla_bridge.backends_are_initialized()


def initialize_distributed(dist_config: Any = None) -> str:
  """Joins the multi-process JAX job if there is one; returns how ("explicit", "slurm", "tpu", "single", "already").

  Order of precedence:
  1. `dist_config.coordinator_address` set: explicit `jax.distributed.initialize(coordinator_address,
     num_processes, process_id, local_device_ids)` (any cluster; e.g. GPU hosts started by hand).
  2. inside `srun` with more than one task: `jax.distributed.initialize()`, which reads the SLURM variables
     (one process per GPU: SLURM_LOCALID selects the device).
  3. on a Cloud TPU VM: `jax.distributed.initialize()`, which finds the pod's workers from the TPU metadata
     (a single-host TPU VM becomes a one-process job).
  4. otherwise: a single process, nothing to do.
  Must run before any other JAX call (jax.devices(), creating arrays): JAX refuses to join a job afterwards.
  """
  if jax.distributed.is_initialized():
    return "already"
  cfg = dict(dist_config or {})
  address = cfg.get("coordinator_address") or ""
  timeout = int(cfg.get("initialization_timeout") or 300)
  if address:
    num_processes = int(cfg.get("num_processes") or 0)
    process_id = int(cfg.get("process_id", -1))
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(
          f"distributed.coordinator_address={address!r} is set, so distributed.num_processes (got "
          f"{num_processes}) must be >= 1 and distributed.process_id (got {process_id}) in [0, num_processes).")
    ids = str(cfg.get("local_device_ids") or "")
    local_ids = [int(i) for i in ids.split(",") if i.strip()] or None
  how = "explicit" if address else "slurm" if _under_slurm_srun() else "tpu" if _on_cloud_tpu_vm() else "single"
  if how == "single":
    return how
  if _backends_initialized():
    if how != "tpu":
      raise RuntimeError(
          "initialize_distributed() was called after JAX had already started its backends, so this process "
          "can no longer join the multi-process job. Call t2i_common.parallel.initialize_distributed("
          "config.distributed) at the top of main(), before any other JAX call (jax.devices(), arrays, jit).")
    log.warning("JAX backends were started before initialize_distributed(): not calling "
                "jax.distributed.initialize(); running with process_count()=%d.", jax.process_count())
    return "single"
  if how == "explicit":
    jax.distributed.initialize(coordinator_address=address, num_processes=num_processes, process_id=process_id,
                               local_device_ids=local_ids, initialization_timeout=timeout)
  else:  # SLURM variables or TPU metadata give the coordinator and the process ids
    jax.distributed.initialize(initialization_timeout=timeout)
  log.info("jax.distributed initialised (%s): process %d of %d, %d local / %d global devices", how,
           jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
  return how


# ----------------------------------------------------------------------------------------------------------------
# Mesh.

def mesh_shape(mesh_config: Any, num_devices: int) -> tuple[int, int]:
  """Resolves the (data, fsdp) sizes; one of them may be -1 (fill with the remaining devices)."""
  sizes = [int(mesh_config["data"]), int(mesh_config["fsdp"])]
  if sizes.count(-1) > 1:
    raise MeshError(f"mesh data={sizes[0]}, fsdp={sizes[1]}: at most one axis may be -1 (fill).")
  for name, size in zip(AXES, sizes):
    if size == 0 or size < -1:
      raise MeshError(f"mesh.{name}={size}: axis sizes must be positive, or -1 to use the remaining devices.")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise MeshError(f"mesh data={sizes[0]}, fsdp={sizes[1]}: {num_devices} devices are not divisible by {known};"
                      f" choose axis sizes whose product divides the device count.")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise MeshError(f"mesh data={sizes[0]} x fsdp={sizes[1]} = {math.prod(sizes)} devices, but "
                    f"jax.device_count() is {num_devices}; set the sizes so their product is {num_devices} "
                    f"(or use -1 for one axis).")
  return sizes[0], sizes[1]


def create_mesh(mesh_config: Any = None, devices: Any = None) -> jax.sharding.Mesh:
  """A ("data", "fsdp") mesh over all devices (or `devices`), sized from `config.mesh`."""
  mesh_config = mesh_config if mesh_config is not None else {"data": -1, "fsdp": 1}
  devices = list(devices) if devices is not None else jax.devices()
  shape = mesh_shape(mesh_config, len(devices))
  # make_mesh orders devices by physical topology (ICI rings on TPU) and process (fsdp stays within a host first).
  auto = (jax.sharding.AxisType.Auto,) * len(AXES)
  return jax.make_mesh(shape, AXES, axis_types=auto, devices=devices)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every mesh axis; other dimensions whole."""
  return NamedSharding(mesh, P(BATCH_AXES))


# ----------------------------------------------------------------------------------------------------------------
# Parameter shardings.

def _is_key(x: Any) -> bool:
  return jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key)


def leaf_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
  """FSDP rule for one array: split its largest dimension divisible by the fsdp size, if it is large enough."""
  if fsdp_size <= 1 or math.prod(shape) < min_size:
    return P()
  candidates = [(size, i) for i, size in enumerate(shape) if size % fsdp_size == 0]
  if not candidates:
    return P()  # nothing divides evenly: replicate rather than pad
  _, dim = max(candidates)  # largest; ties go to the later dimension (output features of a kernel)
  spec = [None] * len(shape)
  spec[dim] = "fsdp"
  return P(*spec)


def param_shardings(abstract_tree: Any, mesh: jax.sharding.Mesh,
                    min_size: int = DEFAULT_MIN_FSDP_SIZE) -> Any:
  """A tree of NamedSharding for `abstract_tree` (arrays or ShapeDtypeStructs; e.g. from jax.eval_shape).

  Arrays with fewer than `min_size` elements, scalars and PRNG keys are replicated; larger ones are split along
  `fsdp` on their largest dimension divisible by the fsdp axis size (replicated if none divides).
  """
  fsdp_size = mesh.shape["fsdp"]

  def one(leaf):
    shape = tuple(getattr(leaf, "shape", ()))
    if _is_key(leaf):
      return replicated(mesh)
    return NamedSharding(mesh, leaf_spec(shape, fsdp_size, min_size))

  return jax.tree.map(one, abstract_tree)


def abstract_with_shardings(abstract_tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs that carry their target sharding (restore targets for orbax)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)


def sharded_init(init_fn: Callable[..., Any], mesh: jax.sharding.Mesh, *args: Any,
                 min_size: int = DEFAULT_MIN_FSDP_SIZE,
                 rules: Callable[[Any, jax.sharding.Mesh], Any] | None = None) -> tuple[Any, Any]:
  """Runs `init_fn(*args)` under jit with out_shardings from its abstract output: returns (tree, shardings).

  `rules(abstract_tree, mesh) -> shardings` replaces the default `param_shardings(..., min_size)`. `args` must be
  identical on every process (e.g. a PRNG key from the config seed).
  """
  abstract = jax.eval_shape(init_fn, *args)
  shardings = rules(abstract, mesh) if rules is not None else param_shardings(abstract, mesh, min_size)
  tree = jax.jit(init_fn, out_shardings=shardings)(*args)
  return tree, shardings


# ----------------------------------------------------------------------------------------------------------------
# Global batches.

def _is_numeric(value: Any) -> bool:
  dtype = np.asarray(value).dtype if not hasattr(value, "dtype") else value.dtype
  return np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)


def global_batch(local_batch: Mapping[str, Any], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Assembles global arrays, split over (data, fsdp), from this process's slice of the batch.

  Every process passes its own `local_batch` (local batch size = global / process_count); the leading dimension
  must be divisible by the number of this process's devices in the mesh. Non-numeric fields (captions as strings,
  keys) are dropped: they cannot live on an accelerator.
  """
  sharding = batch_sharding(mesh)
  local_devices = sum(1 for d in mesh.devices.flat if d.process_index == jax.process_index())
  out = {}
  for name, value in local_batch.items():
    if not _is_numeric(value):
      continue
    value = np.asarray(value)
    if value.ndim == 0 or value.shape[0] % local_devices:
      raise ValueError(
          f"batch field {name!r} has shape {value.shape}: its leading (batch) dimension must be divisible by the "
          f"{local_devices} devices of this process (global batch size must be a multiple of "
          f"{mesh.size} = mesh size).")
    out[name] = jax.make_array_from_process_local_data(sharding, value)
  return out


# XLA options that cut CPU compile time by about half (what jax_disable_most_optimizations sets, but per
# function). Worth it for programs that run once (parameter init) and for tests' tiny models; not for the hot
# training step of a real run.
CPU_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def run_once_compiler_options() -> dict | None:
  """Compiler options for a program that runs once (init): the cheap settings on CPU, defaults elsewhere."""
  return dict(CPU_FAST_COMPILE) if jax.default_backend() == "cpu" else None

