"""The reference AttnGAN GAN losses (taoxugit/AttnGAN code/miscc/losses.py) restated in PyTorch for parity tests.

Same structure and order of operations as upstream: discriminators output sigmoid probabilities scored with
nn.BCELoss; a discriminator is any module with `forward(images) -> features`, `COND_DNET(features, sentence)`
and `UNCOND_DNET(features)` (probabilities). The DAMSM word and sentence losses are the restatements of
tests/test_damsm_parity.py (per-caption loop as upstream). Labels: 1 real, 0 fake, arange(B) for matching.
"""
from __future__ import annotations

import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from test_damsm_parity import torch_sent_loss, torch_words_loss  # noqa: E402


def reference_discriminator_loss(net_d, real_imgs, fake_imgs, conditions):
  """discriminator_loss: real / fake / wrong (real[:-1] with conditions[1:]) terms of one stage."""
  b = real_imgs.size(0)
  real_labels, fake_labels = torch.ones(b), torch.zeros(b)
  real_features = net_d(real_imgs)
  fake_features = net_d(fake_imgs.detach())
  cond_real = nn.BCELoss()(net_d.COND_DNET(real_features, conditions), real_labels)
  cond_fake = nn.BCELoss()(net_d.COND_DNET(fake_features, conditions), fake_labels)
  cond_wrong = nn.BCELoss()(net_d.COND_DNET(real_features[:b - 1], conditions[1:b]), fake_labels[1:b])
  real = nn.BCELoss()(net_d.UNCOND_DNET(real_features), real_labels)
  fake = nn.BCELoss()(net_d.UNCOND_DNET(fake_features), fake_labels)
  return (real + cond_real) / 2.0 + (fake + cond_fake + cond_wrong) / 3.0


def reference_generator_loss(nets_d, image_encoder, fake_imgs, words_embs, sent_emb, cap_lens, class_ids, *,
                             gamma1, gamma2, gamma3, lam):
  """generator_loss: adversarial (uncond + cond) per stage; at the last stage + lam * (w0 + w1 + s0 + s1).

  words_embs: B x D x T (the reference layout); image_encoder(images) -> (regions B x D x h x w, global B x D).
  Returns (total, {"g_loss<i>", "w_loss0", "w_loss1", "s_loss0", "s_loss1"}).
  """
  b = sent_emb.size(0)
  real_labels = torch.ones(b)
  total, parts = 0, {}
  for i, net_d in enumerate(nets_d):
    features = net_d(fake_imgs[i])
    g_loss = (nn.BCELoss()(net_d.UNCOND_DNET(features), real_labels)
              + nn.BCELoss()(net_d.COND_DNET(features, sent_emb), real_labels))
    parts[f"g_loss{i}"] = g_loss
    total = total + g_loss
    if i == len(nets_d) - 1:
      regions, code = image_encoder(fake_imgs[i])
      w0, w1 = torch_words_loss(regions, words_embs, cap_lens, class_ids, gamma1, gamma2, gamma3)
      s0, s1 = torch_sent_loss(code, sent_emb, class_ids, gamma3)
      parts.update(w_loss0=w0, w_loss1=w1, s_loss0=s0, s_loss1=s1)
      total = total + (w0 + w1) * lam + (s0 + s1) * lam
  return total, parts


def reference_kl_loss(mu, logvar):
  """KL_loss: -0.5 * mean(1 + logvar - mu^2 - exp(logvar))."""
  return torch.mean(mu.pow(2).add(logvar.exp()).mul(-1).add(1).add(logvar)).mul(-0.5)
