"""What the VAE and LDM trainers share: the optimizer from config, the batch images, the gradient norm."""
from __future__ import annotations

from typing import Any

import jax
import optax


def make_optimizer(opt: Any) -> optax.GradientTransformation:
  """AdamW with linear warm-up then constant or cosine decay, and global-norm clipping (config.optimizer)."""
  if opt.schedule == "constant":
    schedule = optax.warmup_constant_schedule(0.0, opt.learning_rate, max(1, opt.warmup_steps))
  elif opt.schedule == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(0.0, opt.learning_rate, max(1, opt.warmup_steps),
                                                  max(opt.warmup_steps + 1, opt.decay_steps),
                                                  end_value=opt.learning_rate * opt.final_lr_fraction)
  else:
    raise ValueError(f"config.optimizer.schedule={opt.schedule!r}; expected 'constant' or 'cosine'.")
  parts = [optax.clip_by_global_norm(opt.grad_clip)] if opt.grad_clip > 0 else []
  parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay))
  return optax.chain(*parts)


def optimizer_config(learning_rate: float = 1e-4, warmup_steps: int = 100):
  import ml_collections
  return ml_collections.ConfigDict({
      "learning_rate": learning_rate, "warmup_steps": warmup_steps, "schedule": "constant",
      "decay_steps": 0, "final_lr_fraction": 0.1, "b1": 0.9, "b2": 0.999, "eps": 1e-8,
      "weight_decay": 0.0, "grad_clip": 1.0,
  })


def batch_images(batch: dict) -> jax.Array:
  """The single-scale image batch ([-1, 1], NHWC); diffusion training uses one resolution."""
  if "image" not in batch:
    raise ValueError(f"diffusion training needs one image size (config.data.image_sizes of length 1); the "
                     f"batch has {sorted(k for k in batch if k.startswith('image'))}.")
  return batch["image"]


def grad_norm(grads: Any) -> jax.Array:
  return optax.global_norm(grads)
