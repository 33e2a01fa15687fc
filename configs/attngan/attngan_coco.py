"""AttnGAN on COCO 2014 with the reference hyperparameters (code/cfg/coco_attn2.yml).

    python -m attngan_jax.convert_torch --kind text_encoder --src DAMSMencoders/coco/text_encoder100.pth \
        --out weights/coco_text_encoder --captions coco/captions.pickle
    python -m attngan_jax.convert_torch --kind image_encoder --src DAMSMencoders/coco/image_encoder100.pth \
        --out weights/coco_image_encoder
    python -m attngan_jax.train --config configs/attngan/attngan_coco.py --workdir runs/attngan_coco \
        --config.data.data_dir=DATA --config.damsm.text_encoder=weights/coco_text_encoder \
        --config.damsm.image_encoder=weights/coco_image_encoder
    python -m attngan_jax.evaluate --config configs/attngan/attngan_coco.py --workdir runs/attngan_coco \
        --config.eval.inception_score.weights=weights/fid_inception --config.eval.fid.weights=weights/fid_inception

Batch 14, 120 epochs (82,783 images / 14 = 5,913 steps per epoch: 709,560 iterations), Adam(0.5, 0.999) 2e-4,
lambda 50, gammas 4/5/10, GF_DIM 48, DF_DIM 96, R_NUM 3, WORDS_NUM 12, 3 stages from 64 px, Z_DIM 100,
CONDITION_DIM 100, EMBEDDING_DIM 256, EMA 0.999 without warm-up; every COCO image is its own class in the DAMSM
term and R-precision. Evaluation: 30,000 images, R-precision, IS with the ImageNet Inception (pytorch-fid's weights
serve: improved-gan's classifier), FID with pytorch-fid's. The paper reports IS 25.89 +- .47 and R-precision
85.47 +- 3.69 %; FID 35.49 (pytorch-fid) is reported elsewhere. Not run here (no GPU, no COCO copy).
"""
import ml_collections

from attngan_jax.gan.train_config import attngan_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant:
    raise ValueError(f"unknown variant {variant!r} of attngan_coco.py; it has none.")
  config = attngan_config("coco", "coco", batch_size=14, num_steps=120 * 5913, damsm_lambda=50.0, images_every=1000,
                          checkpoint_every=2000)
  config.eval.batch_size = 50
  config.eval.num_images = 30_000
  return config
