"""Latent diffusion on the built-in shapes data: UNet + a CLIP text encoder learned jointly, on the latents of
the VAE trained by configs/diffusion/shapes_vae.py (stage 2 of 2).

    python -m diffusion_jax.train --config configs/diffusion/shapes_vae.py --workdir runs/shapes_vae
    python -m diffusion_jax.train --config configs/diffusion/shapes_ldm.py --workdir runs/shapes_ldm \
        --config.model.vae_path=runs/shapes_vae/vae

Writes runs/shapes_ldm/pipeline (a diffusers Stable Diffusion folder: `diffusion_jax.from_pretrained` and
diffusers' StableDiffusionPipeline read it), sample grids under runs/shapes_ldm/samples and the shapes oracle's
scores of the samples in metrics.jsonl (sample/object_recall, ...).
Settings chosen for the CPU budget: 32 px scenes (8 x 8 x 4 latents), latents encoded once (model.cache_latents),
min-SNR-5 loss weighting, lr 1e-3, EMA 0.995 with warm-up, UNet (48, 96, 96) with 3.3M parameters.
Measured on 2 idle CPU cores (VAE of shapes_vae.py, then this config): VAE 6 min 52 s; LDM 14 min 27 s (100 s
encoding the 20,000 training images, 25 s compiling, 3.1 steps/s for 2,400 steps); 21 min 19 s for both. The
samples show the right number of separate objects on plain backgrounds with mostly the right colours, but the
objects are round blobs, not yet recognisable shapes. Oracle on 16 test captions (25 DDIM steps, guidance 4):
  step            600   1200   1800   2400
  object recall   5.3    7.9    7.9   13.2 %
  colour recall  31.6   36.8   47.4   57.9 %
  shape recall   15.8   10.5   13.2   13.2 %
On 48 test captions at step 2400, guidance 1.5 / 3 / 6 / 9 gives object recall 8.5 / 9.6 / 9.6 / 9.6 % (colour
59.6-64.9 %, shape 12.8-14.9 %): guidance is not what is missing. Resumed to 6,000 steps (2.5x the budget),
the 16 captions give object recall 15.8 / 15.8 / 18.4 % and colour recall 68.4 / 76.3 / 73.7 % at steps 3000 /
4200 / 6000, shape recall 16-24 %: colours keep improving, geometry barely (a few rings and diamonds appear). The same recipe at 64 px (16 x 16 latents,
UNet (32, 64, 64)) ran at 1.4 steps/s and also drew blobs after 1,000 steps.
Variant "tiny" is the test-suite version; variant "finetune" starts from a diffusers SD folder
(--config.model.pretrained=DIR) instead of training from scratch.
"""
import ml_collections

from diffusion_jax.training.common import optimizer_config
from diffusion_jax.training.ldm_trainer import ldm_model_config
from t2i_common import config as common
from t2i_common.data.config import data_config

VARIANTS = ("", "tiny", "finetune")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of shapes_ldm.py; use one of {VARIANTS}.")
  config = common.experiment_config(
      data=data_config("shapes", image_sizes=(32,)), model=ldm_model_config(),
      optimizer=optimizer_config(learning_rate=1e-3, warmup_steps=200),
      train={"batch_size": 32, "num_steps": 2400, "export_ema": True}, checkpoint_every=600,
      images_every=600)
  config.data.shapes.resolution = 32  # as the VAE of shapes_vae.py: 8 x 8 x 4 latents
  config.model.cache_latents = True
  config.model.snr_gamma = 5.0
  config.model.ema_decay = 0.995
  config.model.unet.block_out_channels = (48, 96, 96)
  if variant == "tiny":
    config.data.shapes.num_train = 64
    config.data.shapes.num_test = 16
    config.data.image_sizes = (32,)
    config.model.vocab.num_caption_examples = 64
    config.model.text.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config.model.unet.update(block_out_channels=(16, 32), num_heads=(2, 2),
                             down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                             up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8)
    config.model.sampling.update(num_images=8, steps=2)
    config.train.batch_size = 8
    config.train.num_steps = 4
    config.train.fast_compile = True
    config.checkpoint.every_steps = 2
    config.logging.every_steps = 2
    config.logging.images_every_steps = 1000  # the export samples once; a second compile would cost test time
  if variant == "finetune":
    config.model.train_text_encoder = False
    config.model.cache_latents = False  # real fine-tuning data is usually augmented, so encode every step
    config.model.sample_scheduler = ""  # the folder's own
    config.model.prediction_type = ""  # the model's own
    config.optimizer.learning_rate = 1e-5
    config.train.batch_size = 8
  return config
