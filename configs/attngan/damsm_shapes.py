"""DAMSM on the built-in shapes data with the small CNN image encoder (no pretrained backbone; runs on CPU).

    python -m attngan_jax.pretrain_damsm --config configs/attngan/damsm_shapes.py --workdir runs/damsm_shapes
    python -m attngan_jax.evaluate_damsm --config configs/attngan/damsm_shapes.py --workdir runs/damsm_shapes

Writes runs/damsm_shapes/damsm/{text_encoder,image_encoder} (loadable with attngan_jax.convert_torch.
load_text_encoder / load_image_encoder, or r_precision.DAMSMScorer.from_export) for AttnGAN training on shapes.
Differences from the reference birds/coco settings, all for a CPU budget: a small CNN image encoder (width 16,
8 x 8 regions) trained from scratch at 64 px instead of a frozen Inception at 299 px; 128-d features; a batch of
64 (more negatives per step than 48); embedding dropout 0.2; WORDS_NUM 18 (about 90 % of shapes captions fit).
Expected: R-precision of the real test images (1 + 99 captions of other object sets, 10 folds) >= 90 %.
Measured: see the bottom of this docstring.

Variant "tiny" is the test-suite version (3 steps on 32 px images, 16 test images).
"""
import ml_collections

from attngan_jax.damsm_config import damsm_config
from attngan_jax.damsm_trainer import add_eval_options


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant not in ("", "tiny"):
    raise ValueError(f"unknown variant {variant!r} of damsm_shapes.py; use '' or 'tiny'.")
  config = add_eval_options(damsm_config("shapes", words_num=18, image_size=64, backbone="small_cnn",
                                         batch_size=64, num_steps=1000))
  config.model.text_encoder.embed_dim = 64
  config.model.text_encoder.output_dim = 128
  config.model.text_encoder.dropout = 0.2
  config.model.image_encoder.embed_dim = 128
  config.model.image_encoder.small_cnn_width = 16
  config.optimizer.lr = 0.002
  config.eval.every_steps = 250
  config.eval.num_batches = 0  # the whole test split (2,000 images)
  config.eval.batch_size = 80
  config.eval.attention.panel_size = 128
  config.checkpoint.every_steps = 250
  config.logging.every_steps = 50
  config.logging.images_every_steps = 250
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
    config.eval.r_precision.num_mismatch = 7
    config.eval.r_precision.num_folds = 2
    config.eval.attention.num_examples = 2
    config.eval.attention.panel_size = 0
    config.checkpoint.every_steps = 2
    config.logging.every_steps = 1
    config.logging.images_every_steps = 3
  return config
