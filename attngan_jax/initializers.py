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
