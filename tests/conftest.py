"""Test session set-up: 8 fake CPU devices so sharding code runs as on a pod slice."""
import contextlib
import os
import sys

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


@contextlib.contextmanager
def _jax_config(**values):
  import jax
  previous = {name: jax.config.values[name] for name in values}
  for name, value in values.items():
    jax.config.update(name, value)
  try:
    yield
  finally:
    for name, value in previous.items():
      jax.config.update(name, value)


@pytest.fixture
def fast_compile():
  """XLA's optimisations off while the test compiles tiny models (compile time dominates them; the numerics the
  tests check do not change); restored afterwards."""
  with _jax_config(jax_disable_most_optimizations=True):
    yield


@pytest.fixture(scope="module")
def fast_compile_module():
  """`fast_compile` for a whole module (`pytestmark = pytest.mark.usefixtures("fast_compile_module")`)."""
  with _jax_config(jax_disable_most_optimizations=True):
    yield


@pytest.fixture(scope="session")
def tiny_shapes_runs(tmp_path_factory):
  """The tiny shapes VAE and LDM (configs' "tiny" variants) trained once per session: (root, vae, ldm), the
  trainers' results. Shared by the trainers' tests and the neglect study's, which only need a pipeline."""
  from diffusion_jax.train import train_and_evaluate
  from t2i_common.config import load_config
  root = tmp_path_factory.mktemp("shapes_diffusion")
  vae = train_and_evaluate(load_config("configs/diffusion/shapes_vae.py:tiny"), str(root / "vae_run"))
  ldm = train_and_evaluate(load_config("configs/diffusion/shapes_ldm.py:tiny", [f"model.vae_path={vae['vae']}"]),
                           str(root / "ldm_run"))
  return root, vae, ldm
