"""The config of DAMSM pretraining (configs/attngan/damsm_*.py build on `damsm_config`)."""
from __future__ import annotations

import ml_collections

from attngan_jax.damsm.loss import damsm_loss_config
from attngan_jax.damsm.optim import optimizer_config
from attngan_jax.damsm.image_encoder import image_encoder_config
from t2i_common import config as common
from t2i_common.data.config import data_config


def text_encoder_config(words_num: int = 18, output_dim: int = 256) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "embed_dim": 300,
      "output_dim": output_dim,
      "dropout": 0.5,
      "words_num": words_num,   # WORDS_NUM: captions are padded / subsampled to this many words
      # "" builds the vocabulary from the train + test captions (saved as <workdir>/vocab.json and reused);
      # a .json path loads ours; a .pickle path reads the reference captions.pickle (needed to use or continue
      # released checkpoints, whose word ids follow it).
      "vocab_file": "",
  })


def damsm_config(dataset: str, *, words_num: int, image_size: int, backbone: str = "inception_v3",
                 batch_size: int = 48, num_steps: int = 100_000) -> ml_collections.ConfigDict:
  """Reference DAMSM hyperparameters (code/cfg/DAMSM/*.yml) for `dataset`."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.mesh = common.mesh_config()
  config.distributed = common.distributed_config()
  config.data = data_config(dataset, image_sizes=(image_size,))
  config.model = ml_collections.ConfigDict({
      "text_encoder": text_encoder_config(words_num),
      "image_encoder": image_encoder_config(backbone),
      "loss": damsm_loss_config(),
      # inception_v3: a converted torchvision Inception-v3 directory (python -m attngan_jax.convert_torch
      # --kind inception) or the torchvision .pth itself; required unless the backbone is trained.
      "pretrained_backbone": "",
      # Start from released/converted DAMSM encoders (directories written by convert_torch); "" = fresh.
      "init_text_encoder": "",
      "init_image_encoder": "",
  })
  config.optimizer = optimizer_config(0.002)
  # ema_decay > 0 keeps an exponential moving average of the encoders, which evaluation and export then use
  # (the reference keeps none: 0).
  config.train = ml_collections.ConfigDict({"batch_size": batch_size, "num_steps": num_steps, "ema_decay": 0.0})
  config.eval = ml_collections.ConfigDict({"every_steps": 2000, "num_batches": 50, "batch_size": batch_size})
  config.checkpoint = common.checkpoint_config(every_steps=2000, keep=3)
  config.logging = common.logging_config(every_steps=50, images_every_steps=2000)
  return config


def tiny_inception_variant(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Smoke-test sizes for the Inception configs (birds, coco): 2 steps, a trainable backbone at 139 px."""
  config.data.image_sizes = (80,)
  config.model.image_encoder.train_backbone = True
  config.model.image_encoder.input_size = 139  # the smallest cheap Inception input: 7 x 7 regions
  config.train.batch_size = 8
  config.train.num_steps = 2
  config.eval.batch_size = 8
  config.eval.num_batches = 1
  config.eval.every_steps = 2
  return config
