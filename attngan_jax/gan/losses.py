"""AttnGAN losses (reference code/miscc/losses.py: discriminator_loss, generator_loss, KL_loss).

The reference's discriminators end in a sigmoid and use nn.BCELoss; ours give logits and use the same binary
cross-entropy on logits (`bce_with_logits`), which is the same function without the sigmoid's saturation.
Every term is a mean over the batch (BCELoss's default reduction).

Discriminator of one stage (not the paper's Eq. 5, which has no "wrong" term):
  L_D = (BCE(real_uncond, 1) + BCE(real_cond, 1)) / 2
      + (BCE(fake_uncond, 0) + BCE(fake_cond, 0) + BCE(wrong_cond, 0)) / 3,
where the wrong pairs are the real images [:-1] with the sentence embeddings [1:] (`wrong_pairs`).

Generator: sum over stages of BCE(uncond, 1) + BCE(cond, 1); plus lambda * L_DAMSM (Lw1 + Lw2 + Ls1 + Ls2 of
attngan_jax.damsm.loss, the frozen DAMSM's encoding of the last stage's images against the captions, same-class
pairs masked as in DAMSM pretraining); plus KL = -0.5 * mean(1 + logvar - mu^2 - exp(logvar)) with weight 1.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from attngan_jax.damsm.loss import damsm_loss, damsm_loss_config

DAMSM_PARTS = ("w_loss0", "w_loss1", "s_loss0", "s_loss1")


def loss_config(damsm_lambda: float = 5.0) -> ml_collections.ConfigDict:
  """The GAN losses' options (config.loss): lambda (TRAIN.SMOOTH.LAMBDA) and the DAMSM term's gammas."""
  return ml_collections.ConfigDict({
      "damsm_lambda": damsm_lambda,   # weight of L_DAMSM in the generator loss (0 switches the term off)
      "damsm": damsm_loss_config(),   # gamma1 / gamma2 / gamma3 = 4 / 5 / 10 as the reference ymls
      "kl_weight": 1.0,
      # With damsm_lambda = 0: still compute (and report) the DAMSM loss of the samples, at the cost of a DAMSM
      # forward per step (e.g. to compare a lambda ablation's runs on that loss).
      "report_damsm": False,
      # R1 (Mescheder et al. 2018): r1_gamma / 2 x the squared gradient norm of each discriminator's logits
      # (unconditional and conditional heads apart) w.r.t. the real matching images. 0 = off, the reference.
      "r1_gamma": 0.0,
      "r1_every": 16,  # lazy: the penalty x r1_every on every r1_every-th iteration (the step costs ~2.5x)
      # Instance noise (Sonderby et al. 2017): Gaussian noise of this std (images in [-1, 1]) added to every image
      # a discriminator sees, real and generated, fresh per call. 0 = off, the reference. Synthetic scenes of flat
      # colours let a discriminator tell any generated image apart by its faint texture alone; noise hides that.
      "d_input_noise": 0.0,
      # > 0: the noise's std falls linearly to 0 at this iteration (clean images after it); 0: constant noise.
      "d_input_noise_steps": 0,
  })


def bce_with_logits(logits: jax.Array, target: float) -> jax.Array:
  """Mean binary cross-entropy of sigmoid(logits) against a constant label (1 real, 0 fake)."""
  logits = jnp.asarray(logits, jnp.float32)
  # -[t log s(x) + (1 - t) log(1 - s(x))] = softplus(x) - t x, stable for any x.
  return jnp.mean(jax.nn.softplus(logits) - target * logits)


def wrong_pairs(real_features: jax.Array, sent_emb: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(features of real images [:-1], sentence embeddings [1:]): mismatched pairs, the reference's wrong term."""
  if real_features.shape[0] != sent_emb.shape[0] or real_features.shape[0] < 2:
    raise ValueError(f"wrong pairs need >= 2 matched images and sentences, got {real_features.shape[0]} images "
                     f"and {sent_emb.shape[0]} sentences.")
  return real_features[:-1], sent_emb[1:]


def discriminator_loss(real_uncond: jax.Array, real_cond: jax.Array, fake_uncond: jax.Array,
                       fake_cond: jax.Array, wrong_cond: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """One stage's D loss from its logits; returns (total, parts)."""
  parts = {"real_uncond": bce_with_logits(real_uncond, 1.0), "real_cond": bce_with_logits(real_cond, 1.0),
           "fake_uncond": bce_with_logits(fake_uncond, 0.0), "fake_cond": bce_with_logits(fake_cond, 0.0),
           "wrong_cond": bce_with_logits(wrong_cond, 0.0)}
  total = ((parts["real_uncond"] + parts["real_cond"]) / 2.0
           + (parts["fake_uncond"] + parts["fake_cond"] + parts["wrong_cond"]) / 3.0)
  return total, parts


def r1_penalty(input_grads: Sequence[jax.Array], gamma: float) -> jax.Array:
  """gamma / 2 x the per-example squared norm of each input gradient [B, ...], averaged over the batch, summed
  over the gradients given (one per logit head)."""
  return 0.5 * gamma * sum(jnp.mean(jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=-1)) for g in input_grads)


def generator_adversarial_loss(uncond: jax.Array, cond: jax.Array) -> jax.Array:
  """One stage's adversarial G loss: BCE(uncond, 1) + BCE(cond, 1) on the fake images' logits."""
  return bce_with_logits(uncond, 1.0) + bce_with_logits(cond, 1.0)


def kl_loss(mu: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mu, exp(logvar)) || N(0, I)) as the reference: -0.5 * mean(1 + logvar - mu^2 - exp(logvar))."""
  mu, logvar = jnp.asarray(mu, jnp.float32), jnp.asarray(logvar, jnp.float32)
  return -0.5 * jnp.mean(1.0 + logvar - mu ** 2 - jnp.exp(logvar))


def generator_loss(stage_logits: Sequence[tuple[jax.Array, jax.Array]], mu: jax.Array, logvar: jax.Array,
                   cfg: ml_collections.ConfigDict, *,
                   damsm_inputs: Optional[dict[str, jax.Array]] = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The full G loss; returns (total, parts).

  stage_logits: (uncond, cond) logits of each stage's discriminator on that stage's fake images.
  damsm_inputs: the frozen DAMSM's features of the last stage's fake images and of the captions:
    {"regions" [B, h, w, D], "image_global" [B, D], "words" [B, T, D], "sentence" [B, D], "lengths" [B],
     "class_ids" [B] or None}; required when cfg.damsm_lambda != 0; with lambda 0 the parts are still reported.
  parts: g_loss<i> per stage, "adversarial", the DAMSM's w_loss0/w_loss1/s_loss0/s_loss1 and "damsm" (their
  sum, before lambda), "kl".
  """
  if not stage_logits:
    raise ValueError("generator_loss needs the logits of at least one stage.")
  parts: dict[str, jax.Array] = {}
  adversarial = jnp.zeros((), jnp.float32)
  for i, (uncond, cond) in enumerate(stage_logits):
    parts[f"g_loss{i}"] = generator_adversarial_loss(uncond, cond)
    adversarial = adversarial + parts[f"g_loss{i}"]
  parts["adversarial"] = adversarial
  total = adversarial
  lam = float(cfg.damsm_lambda)
  if lam and damsm_inputs is None:
    raise ValueError(f"loss.damsm_lambda={lam} needs the DAMSM features (damsm_inputs); set it to 0 to train "
                     "without the DAMSM term.")
  if damsm_inputs is not None:  # with lambda = 0 only reported (no gradient flows through it)
    d = damsm_inputs
    damsm_total, damsm_parts = damsm_loss(d["regions"], d["image_global"], d["words"], d["sentence"], d["lengths"],
                                          d.get("class_ids"), cfg.damsm)
    parts.update({k: v for k, v in damsm_parts.items() if k != "attention"})
    parts["damsm"] = damsm_total
    if lam:
      total = total + lam * damsm_total
    else:
      parts = {k: jax.lax.stop_gradient(v) if k in DAMSM_PARTS + ("damsm",) else v for k, v in parts.items()}
  parts["kl"] = kl_loss(mu, logvar)
  total = total + float(cfg.kl_weight) * parts["kl"]
  return total, parts
