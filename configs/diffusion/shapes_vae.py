"""VAE (AutoencoderKL, 32 px -> 8 x 8 x 4 latents) on the built-in shapes data; stage 1 of the shapes LDM.

    python -m diffusion_jax.train --config configs/diffusion/shapes_vae.py --workdir runs/shapes_vae

Writes runs/shapes_vae/vae (a diffusers vae/ folder with a measured scaling_factor) and reconstruction grids
under runs/shapes_vae/reconstructions. Measured on 2 idle CPU cores: 1,000 steps of batch 32 at 2.9 steps/s,
6 min 52 s wall including start-up and compilation; test PSNR 25.0 dB at step 500 and 26.5 dB (L1 0.048 in
[-1, 1]) at step 1,000; scaling_factor 0.522. (The 64 px model, `--config.data.image_sizes=(64,)
--config.data.shapes.resolution=64 --config.model.sample_size=64 --config.train.batch_size=16
--config.train.num_steps=800`, reached 29.1 dB in about 11 min.)
Variant "tiny" is the test-suite version (a few steps).
"""
import ml_collections

from diffusion_jax.training.common import optimizer_config
from diffusion_jax.training.vae_trainer import vae_model_config
from t2i_common import config as common
from t2i_common.data.config import data_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant not in ("", "tiny"):
    raise ValueError(f"unknown variant {variant!r} of shapes_vae.py; use '' or 'tiny'.")
  # 32 px scenes (rendered at 32 px, 8 x 8 x 4 latents): a quarter of the 64 px compute per image, which is
  # what lets VAE + UNet learn recognisable shapes within 30 minutes on 2 CPU cores; `--config.data.
  # image_sizes=(64,) --config.data.shapes.resolution=64 --config.model.sample_size=64` trains the 64 px model.
  config = common.experiment_config(
      data=data_config("shapes", image_sizes=(32,)), model=vae_model_config(32),
      optimizer=optimizer_config(learning_rate=1e-3, warmup_steps=100),
      train={"batch_size": 32, "num_steps": 1000, "num_eval_images": 16}, checkpoint_every=500, images_every=500)
  config.data.shapes.resolution = 32
  if variant == "tiny":
    config.data.shapes.num_train = 64
    config.data.shapes.num_test = 16
    config.data.image_sizes = (32,)
    config.model.sample_size = 32
    config.model.block_out_channels = (16, 16, 16)
    config.model.norm_num_groups = 8
    config.model.discriminator.enabled = True
    config.model.discriminator.channels = 8
    config.model.discriminator.start_step = 2
    config.train.batch_size = 8
    config.train.num_steps = 4
    config.train.fast_compile = True
    config.train.num_eval_images = 4
    config.checkpoint.every_steps = 2
    config.logging.every_steps = 2
    config.logging.images_every_steps = 4
  return config
