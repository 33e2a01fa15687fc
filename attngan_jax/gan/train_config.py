"""The config of AttnGAN training (configs/attngan/attngan_*.py build on `attngan_config`).

Sections: seed, mesh, distributed, data (t2i_common.data.config; image_sizes = the generator's stage sizes),
model (attngan_jax.gan.config: generator and discriminators), damsm (attngan_jax.gan.damsm: the frozen DAMSM),
loss (attngan_jax.gan.losses: lambda and the DAMSM gammas), optimizer (Adam 0.5 / 0.999, 2e-4 for G and D),
train (batch_size, num_steps, ema_decay, ema_warmup, fast_compile), sample (training-time pictures), eval
(attngan_jax.gan.evaluation), checkpoint, logging.
"""
from __future__ import annotations

import ml_collections

from attngan_jax.gan.config import gan_model_config
from attngan_jax.gan.damsm import damsm_config
from attngan_jax.gan.evaluation import eval_config
from attngan_jax.gan.hooks import sample_config
from attngan_jax.gan.losses import loss_config
from attngan_jax.gan.trainer import optimizer_config
from t2i_common import config as common
from t2i_common.data.config import data_config


def attngan_config(dataset: str, preset: str, *, batch_size: int, num_steps: int, damsm_lambda: float,
                   images_every: int, checkpoint_every: int, **model: object) -> ml_collections.ConfigDict:
  """A full training config: reference values of `preset` ("birds" / "coco") with `model` overrides."""
  model_cfg = gan_model_config(preset, **model)
  sizes = tuple(model_cfg.base_size * 2 ** i for i in range(model_cfg.branch_num))
  config = common.experiment_config(
      data=data_config(dataset, image_sizes=sizes), model=model_cfg, optimizer=optimizer_config(),
      # ema_warmup: min(decay, (1 + step) / (10 + step)) instead of the reference's fixed decay, for short runs.
      train={"batch_size": batch_size, "num_steps": num_steps, "ema_decay": 0.999, "ema_warmup": False},
      checkpoint_every=checkpoint_every, images_every=images_every)
  config.damsm = damsm_config()
  config.loss = loss_config(damsm_lambda)
  config.sample = sample_config()
  config.eval = eval_config()
  return config
