"""DAMSM on the built-in shapes data with the small CNN image encoder (no pretrained backbone; runs on CPU).

    python -m attngan_jax.pretrain_damsm --config configs/attngan/damsm_shapes.py --workdir runs/damsm_shapes

Writes runs/damsm_shapes/damsm/{text_encoder,image_encoder} (loadable with attngan_jax.convert_torch.
load_text_encoder / load_image_encoder) for AttnGAN training on shapes. Variant "tiny" is the test-suite version
(a handful of steps on 32 px images). The full run's accuracy has not been measured yet: watch eval/sent_top1
(within-batch image -> caption retrieval, chance = 1/batch) and eval/loss in the metrics.
"""
import ml_collections

from attngan_jax.damsm_config import damsm_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant not in ("", "tiny"):
    raise ValueError(f"unknown variant {variant!r} of damsm_shapes.py; use '' or 'tiny'.")
  config = damsm_config("shapes", words_num=12, image_size=64, backbone="small_cnn", batch_size=48,
                        num_steps=3000)
  config.optimizer.lr = 0.002
  config.eval.every_steps = 500
  config.eval.num_batches = 10
  config.checkpoint.every_steps = 500
  if variant == "tiny":
    config.data.shapes.num_train = 64
    config.data.shapes.num_test = 16
    config.data.image_sizes = (32,)
    config.model.text_encoder.embed_dim = 16
    config.model.text_encoder.output_dim = 32
    config.model.image_encoder.embed_dim = 32
    config.model.image_encoder.small_cnn_width = 8
    config.train.batch_size = 8
    config.train.num_steps = 3
    config.eval.batch_size = 8
    config.eval.every_steps = 3
    config.eval.num_batches = 2
    config.checkpoint.every_steps = 2
    config.logging.every_steps = 1
  return config
