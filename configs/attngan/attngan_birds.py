"""AttnGAN on CUB-200-2011 birds with the reference hyperparameters (code/cfg/bird_attn2.yml).

    python -m attngan_jax.convert_torch --kind text_encoder --src DAMSMencoders/bird/text_encoder200.pth \
        --out weights/birds_text_encoder --captions birds/captions.pickle
    python -m attngan_jax.convert_torch --kind image_encoder --src DAMSMencoders/bird/image_encoder200.pth \
        --out weights/birds_image_encoder
    python -m attngan_jax.convert_torch --kind stackgan_inception \
        --src inception_finetuned_models/birds_valid299/model.ckpt-5000 --out weights/inception_cub
    python -m attngan_jax.convert_torch --kind fid_inception --src pt_inception-2015-12-05-6726825d.pth \
        --out weights/fid_inception
    python -m attngan_jax.train --config configs/attngan/attngan_birds.py --workdir runs/attngan_birds \
        --config.data.data_dir=DATA --config.damsm.text_encoder=weights/birds_text_encoder \
        --config.damsm.image_encoder=weights/birds_image_encoder
    python -m attngan_jax.evaluate --config configs/attngan/attngan_birds.py --workdir runs/attngan_birds \
        --config.eval.inception_score.weights=weights/inception_cub --config.eval.fid.weights=weights/fid_inception

(or --config.damsm.workdir=runs/damsm_birds for a DAMSM of python -m attngan_jax.pretrain_damsm with
configs/attngan/damsm_birds.py.) Batch 20, 600 epochs (8,855 images / 20 = 442 steps per epoch: 265,200
iterations), Adam(0.5, 0.999) 2e-4 for G and the three Ds, lambda 5, gammas 4/5/10, GF_DIM 32, DF_DIM 64, R_NUM 2,
WORDS_NUM 18, 3 stages from 64 px (64 / 128 / 256), Z_DIM 100, CONDITION_DIM 100, EMBEDDING_DIM 256, EMA 0.999
without warm-up; the attention mask is applied correctly (model.reference_mask_bug=False; the released netG was
trained with the reference's tiling). Evaluation: 30,000 images from test captions, R-precision 1 + 99 (10 folds),
the Inception score with StackGAN's CUB-fine-tuned Inception (the TensorFlow checkpoint of
hanzhanggit/StackGAN-inception-model, --kind stackgan_inception: needs pip install tensorflow-cpu; scored with
StackGAN's input path and its 50 bird classes) and FID with pytorch-fid's weights (--kind fid_inception). The
paper reports IS 4.36 +- .03 and R-precision 67.82 +- 4.43 %; FID 23.98 (pytorch-fid) is reported elsewhere.
Not run here (no GPU, no CUB copy).
"""
import ml_collections

from attngan_jax.gan.train_config import attngan_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant:
    raise ValueError(f"unknown variant {variant!r} of attngan_birds.py; it has none.")
  config = attngan_config("cub", "birds", batch_size=20, num_steps=600 * 442, damsm_lambda=5.0, images_every=1000,
                          checkpoint_every=2000)
  config.eval.batch_size = 50
  config.eval.num_images = 30_000
  return config
