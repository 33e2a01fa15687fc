"""Initialisers that reproduce the reference's PyTorch initialisation."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def uniform(bound: float):
  """U(-bound, bound): the reference's `weight.data.uniform_(-b, b)` and PyTorch's default LSTM/bias init."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init
