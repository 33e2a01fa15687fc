"""DAMSM on the built-in shapes data with the small CNN image encoder (no pretrained backbone; runs on CPU).

    python -m attngan_jax.pretrain_damsm --config configs/attngan/damsm_shapes.py --workdir runs/damsm_shapes
    python -m attngan_jax.evaluate_damsm --config configs/attngan/damsm_shapes.py --workdir runs/damsm_shapes

Writes runs/damsm_shapes/damsm/{text_encoder,image_encoder} (loadable with attngan_jax.convert_torch.
load_text_encoder / load_image_encoder, or r_precision.DAMSMScorer.from_export) for AttnGAN training on shapes.
Differences from the reference birds/coco settings, all for a CPU budget: a small CNN image encoder (width 16,
8 x 8 regions) trained from scratch at 64 px instead of a frozen Inception at 299 px; 128-d features; a batch of
64 (more negatives per step than 48); embedding dropout 0.2; WORDS_NUM 18 (about 90 % of shapes captions fit).
Expected: R-precision of the real test images (1 + 99 captions of other object sets, 10 folds) >= 90 %.
Measured (2,000 test images, 28 % of them with the held-out purple star; eval/r_precision in metrics.jsonl):
  step   250   500   750  1000  1250  1500  1600  1800  2000
  R-p %  50.3  65.3  66.8  72.5  75.5  84.6  88.1  85.4  93.3 +- 1.7 (10 folds)
  at step 2000: 95.2 % on scenes without the held-out pair, 88.4 % on those with a purple star.
Cost, measured on a 2-core machine shared with other jobs (load average 6-14, so its wall times of 34 + 19 + 7
min for three resumed pieces mean little): 1,984 CPU-s user+sys for the 2,000 steps (1,474 s user; the system
time is mostly contention), including three start-ups/compilations and nine full-split evaluations, about
0.8 CPU-s per step. On 2 idle cores that is roughly 12-16 minutes; re-measure there. Step-to-step R-precision
varies by a few points (1600: 88.1, 1800: 85.4), so >= 90 % at the end is likely but not certain. Remaining
errors are mostly shapes confused at 64 px (ring/cross/star, diamond/triangle); colours are almost always right.

Variant "tiny" is the test-suite version (3 steps on 32 px images, 16 test images).
"""
import ml_collections

from attngan_jax.damsm_config import damsm_config
from attngan_jax.damsm_trainer import add_eval_options


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant not in ("", "tiny"):
    raise ValueError(f"unknown variant {variant!r} of damsm_shapes.py; use '' or 'tiny'.")
  config = add_eval_options(damsm_config("shapes", words_num=18, image_size=64, backbone="small_cnn",
                                         batch_size=64, num_steps=1700))
  config.model.text_encoder.embed_dim = 64
  config.model.text_encoder.output_dim = 128
  config.model.text_encoder.dropout = 0.2
  config.model.image_encoder.embed_dim = 128
  config.model.image_encoder.small_cnn_width = 16
  config.optimizer.lr = 0.002
  # Evaluated and exported weights are an EMA of the last ~200 steps: the raw weights' R-precision swings by
  # several points from one evaluation to the next (88.1, 85.4, 93.3 % at steps 1600, 1800, 2000 of one run).
  # (Annealing the lr instead, x0.6 per epoch, slowed learning: 76.7 % after 1,400 steps.)
  config.train.ema_decay = 0.995
  config.eval.every_steps = 1700  # once, at the end: a full-split evaluation costs about 15 s
  config.eval.num_batches = 0  # the whole test split (2,000 images)
  config.eval.batch_size = 80
  config.eval.attention.panel_size = 128
  config.checkpoint.every_steps = 850
  config.logging.every_steps = 50
  config.logging.images_every_steps = 1700
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
