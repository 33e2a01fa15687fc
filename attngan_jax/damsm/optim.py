"""DAMSM pretraining optimizer: frozen image backbone, gradient clipping on the text encoder only.

Reference (pretrain_DAMSM.py): Adam(betas 0.5, 0.999) over the text encoder and the image encoder's new
layers (the Inception weights have requires_grad=False); torch.nn.utils.clip_grad_norm(text encoder, 0.25)
before each step; lr 0.002 multiplied by 0.98 after every epoch while it is above lr/10.
(The reference also re-creates Adam every epoch, resetting its moments; we keep one Adam state.)

Parameters are one tree {"text_encoder": ..., "image_encoder": ...}. The backbone subtree is frozen with
optax.multi_transform (label "frozen" -> zero updates, no optimizer state), and `stop_backbone_gradients`
lets the step skip computing its gradients at all.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import ml_collections
import optax

BACKBONE_KEYS = {"inception_v3": "inception", "small_cnn": "small_cnn"}


def optimizer_config(lr: float = 0.002) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "lr": lr,
      "b1": 0.5,
      "b2": 0.999,
      "eps": 1e-8,
      "lr_decay_per_epoch": 0.98,
      "min_lr_fraction": 0.1,
      "text_grad_clip": 0.25,
  })


def lr_schedule(cfg: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """lr * decay^epoch, with the decay stopping at the first epoch whose lr is <= lr * min_lr_fraction."""
  if steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}.")
  decay, floor = cfg.lr_decay_per_epoch, cfg.min_lr_fraction
  last = math.ceil(math.log(floor) / math.log(decay)) if 0 < decay < 1 and 0 < floor < 1 else 0

  def schedule(step):
    epoch = jax.numpy.minimum(step // steps_per_epoch, last)
    return cfg.lr * decay ** epoch
  return schedule


def param_labels(params: Any, backbone: str, train_backbone: bool) -> Any:
  """"text" / "image" / "frozen" for every leaf of {"text_encoder", "image_encoder"}."""
  labels = {"text_encoder": jax.tree.map(lambda _: "text", params["text_encoder"]),
            "image_encoder": jax.tree.map(lambda _: "image", params["image_encoder"])}
  key = BACKBONE_KEYS[backbone]
  if not train_backbone:
    if key not in params["image_encoder"]:
      raise ValueError(f"the image encoder has no {key!r} parameters to freeze (backbone {backbone!r}).")
    labels["image_encoder"] = dict(labels["image_encoder"],
                                   **{key: jax.tree.map(lambda _: "frozen", params["image_encoder"][key])})
  return labels


def make_optimizer(cfg: ml_collections.ConfigDict, params: Any, *, backbone: str, train_backbone: bool,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  lr = lr_schedule(cfg, steps_per_epoch)
  adam = lambda: optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)  # noqa: E731
  text = adam() if not cfg.text_grad_clip else optax.chain(optax.clip_by_global_norm(cfg.text_grad_clip), adam())
  return optax.multi_transform({"text": text, "image": adam(), "frozen": optax.set_to_zero()},
                               param_labels(params, backbone, train_backbone))


def stop_backbone_gradients(params: Any, backbone: str, train_backbone: bool) -> Any:
  """The same params with the frozen backbone behind stop_gradient (its weight gradients are never computed;
  gradients still flow through its activations, e.g. to generated images)."""
  if train_backbone:
    return params
  key = BACKBONE_KEYS[backbone]
  image = dict(params["image_encoder"])
  image[key] = jax.lax.stop_gradient(image[key])
  return dict(params, image_encoder=image)
