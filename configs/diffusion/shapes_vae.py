"""VAE (AutoencoderKL, 64 px -> 16 x 16 x 4 latents) on the built-in shapes data; stage 1 of the shapes LDM.

    python -m diffusion_jax.train --config configs/diffusion/shapes_vae.py --workdir runs/shapes_vae

Writes runs/shapes_vae/vae (a diffusers vae/ folder with a measured scaling_factor) and reconstruction grids
under runs/shapes_vae/reconstructions. On 2 CPU cores the default run takes about 6 minutes and reaches a test
PSNR of about 30 dB (see README). Variant "tiny" is the test-suite version (a few steps).
"""
import ml_collections

from diffusion_jax.training.common import optimizer_config
from diffusion_jax.training.vae_trainer import vae_model_config
from t2i_common import config as common
from t2i_common.data.config import data_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant not in ("", "tiny"):
    raise ValueError(f"unknown variant {variant!r} of shapes_vae.py; use '' or 'tiny'.")
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.mesh = common.mesh_config()
  config.distributed = common.distributed_config()
  config.data = data_config("shapes", image_sizes=(64,))
  config.model = vae_model_config(64)
  config.optimizer = optimizer_config(learning_rate=1e-3, warmup_steps=100)
  config.train = ml_collections.ConfigDict({"batch_size": 16, "num_steps": 800, "num_eval_images": 8,
                                         "fast_compile": False})
  config.checkpoint = common.checkpoint_config(every_steps=400, keep=2)
  config.logging = common.logging_config(every_steps=50, images_every_steps=400)
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
