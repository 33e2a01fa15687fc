"""DAMSM text encoder: word embedding + bidirectional LSTM over padded, masked captions.

Equivalent to the reference RNN_ENCODER (nn.Embedding + dropout + nn.LSTM(bidirectional, batch_first) over a
pack_padded_sequence): padded positions never enter the recurrence, the backward direction starts at each
caption's own last word, padded outputs are zero (as pad_packed_sequence gives), and the sentence vector is
[forward state after the last word, backward state after the first word].

Parameters keep PyTorch's LSTM layout (gate order i, f, g, o; separate input and recurrent biases) so that
a checkpoint maps one to one (attngan_jax.convert_torch).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from attngan_jax.initializers import uniform


class LSTMDirection(nn.Module):
  """One direction of an LSTM with PyTorch's parameterisation, run over valid positions only."""
  hidden: int

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x: [B, T, F]; mask: bool [B, T], a prefix of True per row. Returns outputs [B, T, H], final h [B, H]."""
    h_dim, f_dim = self.hidden, x.shape[-1]
    init = uniform(1.0 / h_dim ** 0.5)  # PyTorch's nn.LSTM default init
    kernel_ih = self.param("kernel_ih", init, (f_dim, 4 * h_dim))
    kernel_hh = self.param("kernel_hh", init, (h_dim, 4 * h_dim))
    bias_ih = self.param("bias_ih", init, (4 * h_dim,))
    bias_hh = self.param("bias_hh", init, (4 * h_dim,))
    # The input projection of every step in one matmul; the scan only carries the recurrent part.
    x_proj = jnp.einsum("btf,fg->tbg", x, kernel_ih) + (bias_ih + bias_hh)
    mask_t = jnp.swapaxes(mask, 0, 1)[..., None]

    def step(carry, inputs):
      h, c = carry
      xp, m = inputs
      gates = xp + h @ kernel_hh
      i, f, g, o = jnp.split(gates, 4, axis=-1)
      c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
      h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
      # Past a caption's end the state is frozen, so the final carry is the state after its last word.
      h, c = jnp.where(m, h_new, h), jnp.where(m, c_new, c)
      return (h, c), jnp.where(m, h_new, 0.0)

    zeros = jnp.zeros((x.shape[0], h_dim), x_proj.dtype)
    (h_last, _), outputs = jax.lax.scan(step, (zeros, zeros), (x_proj, mask_t))
    return jnp.swapaxes(outputs, 0, 1), h_last


def reverse_within_length(x: jax.Array, lengths: jax.Array) -> jax.Array:
  """Reverses each row's first `lengths[b]` positions along axis 1, leaving the padding in place.

  Its own inverse, so it also maps the backward direction's outputs back to word order.
  """
  t = jnp.arange(x.shape[1])[None, :]
  idx = jnp.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
  idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


class TextEncoder(nn.Module):
  """RNN_ENCODER: tokens [B, T] int, lengths [B] -> words [B, T, D] (zero past each length), sentence [B, D].

  D = output_dim = 2 x hidden units per direction (256 in AttnGAN). `deterministic=False` applies dropout to
  the word embeddings (needs a 'dropout' rng). Lengths must lie in 1..T (0 gives zero vectors).
  The reference layout of the word features is [B, D, T]: `jnp.swapaxes(words, 1, 2)`.
  """
  n_words: int
  embed_dim: int = 300
  output_dim: int = 256
  dropout: float = 0.5

  @nn.compact
  def __call__(self, tokens: jax.Array, lengths: jax.Array, *,
               deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
    if self.output_dim % 2:
      raise ValueError(f"output_dim must be even (two LSTM directions), got {self.output_dim}.")
    hidden = self.output_dim // 2
    lengths = jnp.asarray(lengths, jnp.int32)
    emb = nn.Embed(self.n_words, self.embed_dim, embedding_init=uniform(0.1), name="encoder")(tokens)
    emb = nn.Dropout(self.dropout)(emb, deterministic=deterministic)
    mask = jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]
    fwd_out, fwd_last = LSTMDirection(hidden, name="forward")(emb, mask)
    bwd_out_rev, bwd_last = LSTMDirection(hidden, name="backward")(reverse_within_length(emb, lengths), mask)
    bwd_out = reverse_within_length(bwd_out_rev, lengths)
    words = jnp.concatenate([fwd_out, bwd_out], axis=-1)
    sentence = jnp.concatenate([fwd_last, bwd_last], axis=-1)
    return words, sentence
