"""Initialisers that reproduce the reference's PyTorch initialisation."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def uniform(bound: float):
  """U(-bound, bound): the reference's `weight.data.uniform_(-b, b)` and PyTorch's default LSTM/bias init."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def rbg_key(key: jax.Array) -> jax.Array:
  """A key of the 'rbg' generator derived from `key` (threefry or raw uint32 data).

  XLA compiles threefry slowly on CPU (seconds per distinct parameter shape in an init, and again for dropout
  masks); RngBitGenerator-based 'rbg' keys compile several times faster. Used for parameter initialisation and
  dropout, where the exact stream does not matter but determinism for a given key and mesh does.
  """
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    if jax.random.key_impl(key) == jax.random.key_impl(jax.random.key(0, impl="rbg")):
      return key
    key = jax.random.key_data(key)
  data = jnp.ravel(jnp.asarray(key, jnp.uint32))[:2]
  return jax.random.wrap_key_data(jnp.concatenate([data, data ^ jnp.uint32(0x9E3779B9)]), impl="rbg")


# The AttnGAN generator and discriminators (reference miscc/utils.py weights_init, applied to netG and every netD):
# every Conv and Linear weight orthogonal with gain 1, Linear biases 0, BatchNorm weight N(1, 0.02) and bias 0.
# Conv biases are not touched there, so they keep PyTorch's default (`torch_default_bias`).

def orthogonal():
  """Orthogonal, gain 1. PyTorch makes the (out, fan_in) matrix orthogonal; Flax kernels are its transpose
  ((kh, kw, in, out) flattened to (fan_in, out)), which has the same distribution."""
  return jax.nn.initializers.orthogonal(scale=1.0, column_axis=-1)


def normal(mean: float, std: float):
  """N(mean, std^2): the reference's BatchNorm scale init `weight.data.normal_(1.0, 0.02)`."""
  def init(key, shape, dtype=jnp.float32):
    return mean + std * jax.random.normal(key, shape, dtype)
  return init


def torch_default_bias(fan_in: int):
  """PyTorch's default Conv/Linear bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  return uniform(fan_in ** -0.5)
