"""VAE (AutoencoderKL, 32 px -> 16 x 16 x 4 latents) on the built-in shapes data; stage 1 of the shapes LDM.

    python -m diffusion_jax.train --config configs/diffusion/shapes_vae.py --workdir runs/shapes_vae

Writes runs/shapes_vae/vae (a diffusers vae/ folder with a measured scaling_factor) and reconstruction grids
under runs/shapes_vae/reconstructions. Measured on 2 idle CPU cores: 600 steps of batch 16 at 2.2-2.3 steps/s,
4 min 50 s to 4 min 55 s wall (two runs) including start-up and compilation; test PSNR 28.6 dB (L1 0.042 in
[-1, 1]); scaling_factor 0.557. The shapes oracle finds 80 % of the objects of 200 test scenes (1-3 objects) in the
reconstructions (colour 99 %, shape 80 %; 100 % in the originals). Other settings, same oracle test: batch 32 (9
min 42 s) 29.1 dB, 82 %; block_out_channels (16, 32) at batch 32 (2.2 times the steps/s of (32, 64) on a shared
machine) 27.5 dB, 76 %, at batch 16 (3 min 40 s, sharing the machine) 66 % (colour 84 %); 300 steps of batch 32 at
lr 2e-3 24.2 dB, 55 %. The three-level model (8 x 8 x 4 latents, `--config.model.block_out_channels=(16,32,64)`,
2.9 steps/s) reached 26.5 dB after 1,000 steps but its reconstructions keep only 40 % of the objects
recognisable: a small object is 2 x 2 latent pixels there.
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
  # 32 px scenes (rendered at 32 px): a quarter of the 64 px compute per image, which the 30-minute CPU budget
  # of VAE + UNet needs; `--config.data.image_sizes=(64,) --config.data.shapes.resolution=64
  # --config.model.sample_size=64` trains a 64 px model.
  config = common.experiment_config(
      data=data_config("shapes", image_sizes=(32,)), model=vae_model_config(32),
      optimizer=optimizer_config(learning_rate=1e-3, warmup_steps=100),
      train={"batch_size": 16, "num_steps": 600, "num_eval_images": 16}, checkpoint_every=500, images_every=500)
  config.data.shapes.resolution = 32
  # Batch 16: the VAE step is compute-bound, so it halves the time of batch 32 (4 min 55 s against 9 min 42 s)
  # for 80 % against 82 % of the objects kept recognisable, leaving the LDM more of the 30-minute budget.
  # Two levels: downsampling by 2, 16 x 16 x 4 latents. With three levels (8 x 8 x 4 latents, the SD factor
  # of 8 relative to 64 px) a small object covers 2 x 2 latent pixels and the shapes oracle recognised only
  # 40 % of the objects in the VAE's own reconstructions after 1,000 steps; with two, 80 % after 600 steps.
  config.model.block_out_channels = (32, 64)
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
