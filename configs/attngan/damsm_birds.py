"""DAMSM on CUB-200-2011 birds with the reference hyperparameters (code/cfg/DAMSM/bird.yml).

    python -m attngan_jax.convert_torch --kind inception --src inception_v3_google-0cc3c7bd.pth --out weights/inception
    python -m attngan_jax.pretrain_damsm --config configs/attngan/damsm_birds.py --workdir runs/damsm_birds \
        --config.model.pretrained_backbone=weights/inception --config.data.data_dir=DATA \
        --config.model.text_encoder.vocab_file=birds/captions.pickle

Batch 48, Adam(0.5, 0.999) lr 0.002 x0.98 per epoch down to lr/10, gammas 4/5/10, WORDS_NUM 18, 299 px images,
frozen ImageNet Inception-v3. The reference trains 600 epochs (8,855 images / 48 = 184 steps per epoch, about
110k steps). Use the released captions.pickle as the vocabulary to stay id-compatible with released encoders.
Held out: every eval.every_steps the test losses and the R-precision of the test images (1 caption + 99 of other
classes, 10 folds; eval.num_batches x 48 images) go to eval/* in TensorBoard and
metrics.jsonl; word-region attention of 4 test captions to <workdir>/attention/. Full-split R-precision:
    python -m attngan_jax.evaluate_damsm --config configs/attngan/damsm_birds.py --workdir runs/damsm_birds
Variant "tiny": a few steps with a trainable Inception at small size (smoke test; not run by the suite on CPU).
"""
import ml_collections

from attngan_jax.damsm.config import damsm_config, tiny_inception_variant
from attngan_jax.damsm.trainer import add_eval_options


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant not in ("", "tiny"):
    raise ValueError(f"unknown variant {variant!r} of damsm_birds.py; use '' or 'tiny'.")
  config = add_eval_options(damsm_config("cub", words_num=18, image_size=299, batch_size=48, num_steps=600 * 184))
  config.eval.every_steps = 184 * 5
  if variant == "tiny":
    tiny_inception_variant(config)
    config.eval.r_precision.num_mismatch = 4
    config.eval.r_precision.num_folds = 2
  return config
