"""DAMSM matching losses (AttnGAN paper Eq. 7-14; reference miscc/losses.py), batched over all pairs.

Every caption is scored against every image of the batch at once (einsum over [images, captions, ...]), with
per-caption lengths handled by masking instead of a Python loop over captions. Similarity matrices are
[image i, caption j]; loss0 is the image -> caption cross-entropy (rows), loss1 caption -> image (columns),
as the reference's (loss0, loss1).

Word level, for image i and caption j (e: words [T, D], v: regions [N, D]):
  s = v e^T [N, T]; softmax over the caption's words (Eq. 8); alpha = softmax over regions of gamma1 * s^T
  (Eq. 9); c = alpha v [T, D]; R(c_t, e_t) cosine; R(Q, D) = log sum_t exp(gamma2 R(c_t, e_t)) (reference) or
  that divided by gamma2, i.e. the log of the sum raised to 1/gamma2 (paper Eq. 10, `paper_word_score`);
  scores x gamma3 (Eq. 11). Sentence level: cosine(global image, sentence) x gamma3.
Off-diagonal pairs of the same class are masked out (-inf), as the reference does for CUB.

Under data parallelism call these on the global batch inside jit (features sharded over the batch): every
caption then has the whole global batch as negatives, and XLA inserts the gathers.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections

EPS = 1e-8  # the reference's clamp on the product of norms


def damsm_loss_config() -> ml_collections.ConfigDict:
  """Loss options (config.model.loss): the reference yml's gammas for birds/coco."""
  return ml_collections.ConfigDict({
      "gamma1": 4.0,
      "gamma2": 5.0,
      "gamma3": 10.0,
      "paper_word_score": False,  # False: reference (no 1/gamma2); True: paper Eq. 10
      "mask_same_class": True,
  })


def _safe_sqrt(sq: jax.Array) -> jax.Array:
  """sqrt with a finite gradient at zero (and 0 for the tiny negatives rounding can give)."""
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _safe_norm(x: jax.Array, axis: int = -1) -> jax.Array:
  """L2 norm with a finite gradient at zero (padding words are zero vectors)."""
  return _safe_sqrt(jnp.sum(x * x, axis=axis))


def pair_mask(class_ids: Optional[jax.Array], batch: int,
              example_mask: Optional[jax.Array] = None) -> Optional[jax.Array]:
  """bool [B, B]: True where a pair is excluded from the softmax (same class off the diagonal, or padding)."""
  mask = None
  if class_ids is not None:
    class_ids = jnp.asarray(class_ids)
    mask = (class_ids[:, None] == class_ids[None, :]) & ~jnp.eye(batch, dtype=bool)
  if example_mask is not None:
    invalid = ~jnp.asarray(example_mask, bool)
    pad = (invalid[:, None] | invalid[None, :]) & ~jnp.eye(batch, dtype=bool)
    mask = pad if mask is None else mask | pad
  return mask


def _cross_entropy_both(scores: jax.Array, mask: Optional[jax.Array],
                        example_mask: Optional[jax.Array]) -> tuple[jax.Array, jax.Array]:
  """Mean cross-entropy with target = diagonal over rows (loss0) and over columns (loss1)."""
  if mask is not None:
    scores = jnp.where(mask, -jnp.inf, scores)
  # A masked sum, not jnp.diagonal: on batch-sharded scores the latter's transpose puts all-gathers inside
  # conditionals, which XLA:CPU may order differently per device (a collective deadlock on 8 fake devices).
  diag = jnp.sum(jnp.where(jnp.eye(scores.shape[0], dtype=bool), scores, 0.0), axis=1)
  nll0 = jax.nn.logsumexp(scores, axis=1) - diag
  nll1 = jax.nn.logsumexp(scores, axis=0) - diag
  if example_mask is None:
    return jnp.mean(nll0), jnp.mean(nll1)
  w = jnp.asarray(example_mask, scores.dtype)
  denom = jnp.maximum(jnp.sum(w), 1.0)
  return jnp.sum(nll0 * w) / denom, jnp.sum(nll1 * w) / denom


def word_attention(regions: jax.Array, words: jax.Array, lengths: jax.Array,
                   gamma1: float) -> tuple[jax.Array, jax.Array]:
  """Word-region attention of every (image, caption) pair, the reference's func_attention batched.

  regions [Bi, N, D], words [Bc, T, D], lengths [Bc] ->
    sims [Bi, Bc, N, T] (region . word, Eq. 7) and alpha [Bi, Bc, T, N] (attention over regions per word).
  """
  t = words.shape[1]
  word_valid = jnp.arange(t)[None, :] < lengths[:, None]            # [Bc, T]
  sims = jnp.einsum("ind,jtd->ijnt", regions, words)                  # Eq. 7
  s = jnp.where(word_valid[None, :, None, :], sims, jnp.finfo(sims.dtype).min)
  s = jax.nn.softmax(s, axis=-1)                                      # Eq. 8: over the caption's words
  alpha = jax.nn.softmax(gamma1 * jnp.swapaxes(s, -1, -2), axis=-1)   # Eq. 9: over regions, [Bi, Bc, T, N]
  return sims, alpha


def word_scores(regions: jax.Array, words: jax.Array, lengths: jax.Array, *, gamma1: float, gamma2: float,
                paper_word_score: bool = False) -> tuple[jax.Array, jax.Array]:
  """R(image i, caption j) before gamma3 [Bi, Bc], and the matched pairs' attention [B, T, N].

  regions: [B, h, w, D] or [B, N, D]; words [B, T, D] (anything past `lengths` is ignored).
  """
  if regions.shape[0] != words.shape[0]:
    raise ValueError(f"{regions.shape[0]} images but {words.shape[0]} captions: DAMSM pairs them one to one.")
  if regions.ndim == 4:
    regions = regions.reshape(regions.shape[0], -1, regions.shape[-1])
  lengths = jnp.asarray(lengths, jnp.int32)
  sims, alpha = word_attention(regions, words, lengths, gamma1)
  word_valid = jnp.arange(words.shape[1])[None, :] < lengths[:, None]
  # R(c_t, e_t) without forming the contexts c_t = sum_n alpha_tn v_n ([Bi, Bc, T, D], the largest tensor of
  # the loss): <c_t, e_t> = sum_n alpha_tn <v_n, e_t> reuses Eq. 7's products, and |c_t|^2 = alpha_t^T G alpha_t
  # with the regions' Gram matrix G [N, N], which is smaller than D when N <= D.
  dot = jnp.einsum("ijtn,ijnt->ijt", alpha, sims)
  gram = jnp.einsum("ind,imd->inm", regions, regions)
  context_sq = jnp.einsum("ijtn,ijtn->ijt", jnp.einsum("ijtm,inm->ijtn", alpha, gram), alpha)
  context_norm = _safe_sqrt(context_sq)
  # Padding words are zero; give them a harmless stand-in so the gradient stays finite, then drop them.
  word_norm = _safe_norm(jnp.where(word_valid[..., None], words, 1.0))  # [Bc, T]
  r = dot / jnp.maximum(context_norm * word_norm[None], EPS)          # cosine(c_t, e_t), [Bi, Bc, T]
  r = jnp.where(word_valid[None], gamma2 * r, -jnp.inf)
  score = jax.nn.logsumexp(r, axis=-1)                                # Eq. 10 without the 1/gamma2
  if paper_word_score:
    score = score / gamma2
  diag = jnp.arange(regions.shape[0])
  return score, alpha[diag, diag]


def words_loss(regions: jax.Array, words: jax.Array, lengths: jax.Array,
               class_ids: Optional[jax.Array] = None, *, gamma1: float, gamma2: float, gamma3: float,
               paper_word_score: bool = False, example_mask: Optional[jax.Array] = None):
  """Word-level DAMSM loss: (loss0, loss1, attention [B, T, N] of each image with its own caption)."""
  score, attn = word_scores(regions, words, lengths, gamma1=gamma1, gamma2=gamma2,
                            paper_word_score=paper_word_score)
  loss0, loss1 = _cross_entropy_both(gamma3 * score, pair_mask(class_ids, score.shape[0], example_mask),
                                     example_mask)
  return loss0, loss1, attn


def sent_loss(image_global: jax.Array, sentence: jax.Array, class_ids: Optional[jax.Array] = None, *,
              gamma3: float, example_mask: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """Sentence-level DAMSM loss (loss0 image -> caption, loss1 caption -> image)."""
  norms = _safe_norm(image_global)[:, None] * _safe_norm(sentence)[None, :]
  scores = (image_global @ sentence.T) / jnp.maximum(norms, EPS) * gamma3
  return _cross_entropy_both(scores, pair_mask(class_ids, scores.shape[0], example_mask), example_mask)


def damsm_loss(regions: jax.Array, image_global: jax.Array, words: jax.Array, sentence: jax.Array,
               lengths: jax.Array, class_ids: Optional[jax.Array], cfg: ml_collections.ConfigDict, *,
               example_mask: Optional[jax.Array] = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_DAMSM = w_loss0 + w_loss1 + s_loss0 + s_loss1 with the options of `damsm_loss_config()`.

  Returns (total, {"w_loss0", "w_loss1", "s_loss0", "s_loss1", "attention"}).
  """
  ids = class_ids if cfg.mask_same_class else None
  w0, w1, attn = words_loss(regions, words, lengths, ids, gamma1=cfg.gamma1, gamma2=cfg.gamma2,
                            gamma3=cfg.gamma3, paper_word_score=cfg.paper_word_score, example_mask=example_mask)
  s0, s1 = sent_loss(image_global, sentence, ids, gamma3=cfg.gamma3, example_mask=example_mask)
  total = w0 + w1 + s0 + s1
  return total, {"w_loss0": w0, "w_loss1": w1, "s_loss0": s0, "s_loss1": s1, "attention": attn}
