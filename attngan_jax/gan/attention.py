"""Word attention of the attentional generator (paper Eq. 2; reference GlobalAttention.GlobalAttentionGeneral).

Each image sub-region (query) attends over the caption's words: the word features are projected into the
image feature space by a 1x1 conv (e' = U e, no bias), scores s = h^T e', beta = softmax over the words with
padding words excluded, and the word-context of a region is sum_j beta_j e'_j.

The mask and the reference's bug: the reference flattens the scores to [B * Q, T] (row b * Q + q for caption b
and region q) and tiles the [B, T] padding mask with `mask.repeat(Q, 1)`, so row b * Q + q gets the mask of
caption (b * Q + q) mod B instead of caption b (taoxugit/AttnGAN issue 93). With captions of different lengths
a region then excludes another caption's padding, and for short captions much of its attention lands on its
own padding words. `reference_mask_bug=False` (default) masks each caption with its own padding;
`reference_mask_bug=True` reproduces the reference's tiling exactly, which the released generators were trained
with. Every caption needs at least one word (a mask row that is all True gives NaN, as in the reference).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from attngan_jax.gan.blocks import conv1x1


def attention_mask(mask: jax.Array, num_queries: int, reference_mask_bug: bool) -> jax.Array:
  """The [B, Q, T] boolean mask (True = excluded) applied to the scores of Q regions per caption.

  mask: [B, T], True at padding. With `reference_mask_bug` region q of caption b gets the padding of caption
  (b * Q + q) mod B, which is what `mask.repeat(Q, 1)` does on the reference's [B * Q, T] score rows.
  """
  b = mask.shape[0]
  if not reference_mask_bug:
    return jnp.broadcast_to(mask[:, None, :], (b, num_queries, mask.shape[1]))
  row = jnp.arange(b)[:, None] * num_queries + jnp.arange(num_queries)[None, :]
  return mask[row % b]


class WordAttention(nn.Module):
  """GlobalAttentionGeneral: image features h [B, H, W, C], words [B, T, D], mask [B, T] (True = padding)
  -> word-context features [B, H, W, C] and attention maps [B, T, H, W] (beta, summing to 1 over T)."""
  reference_mask_bug: bool = False

  @nn.compact
  def __call__(self, h: jax.Array, words: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    b, height, width, c = h.shape
    t = words.shape[1]
    # 1x1 conv over the words as the reference (a [B, D, T, 1] image): e' = U e, [B, T, C].
    source = conv1x1(c, "conv_context")(words[:, :, None, :])[:, :, 0, :]
    query = h.reshape(b, height * width, c)
    scores = jnp.einsum("bqc,btc->bqt", query, source)
    excluded = attention_mask(mask, height * width, self.reference_mask_bug)
    beta = jax.nn.softmax(jnp.where(excluded, -jnp.inf, scores), axis=-1)  # Eq. 2, over the words
    context = jnp.einsum("bqt,btc->bqc", beta, source).reshape(b, height, width, c)
    maps = jnp.transpose(beta, (0, 2, 1)).reshape(b, t, height, width)
    return context, maps
