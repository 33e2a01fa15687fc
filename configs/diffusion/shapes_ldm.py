"""Latent diffusion on the built-in shapes data: UNet + a CLIP text encoder learned jointly, on the latents of
the VAE trained by configs/diffusion/shapes_vae.py (stage 2 of 2).

    python -m diffusion_jax.train --config configs/diffusion/shapes_vae.py --workdir runs/shapes_vae
    python -m diffusion_jax.train --config configs/diffusion/shapes_ldm.py --workdir runs/shapes_ldm \
        --config.model.vae_path=runs/shapes_vae/vae
    python -m diffusion_jax.evaluate --config configs/diffusion/shapes_ldm.py --workdir runs/shapes_ldm \
        --config.model.sampling.num_images=96

Writes runs/shapes_ldm/pipeline (a diffusers Stable Diffusion folder: `diffusion_jax.from_pretrained` and
diffusers' StableDiffusionPipeline read it), sample grids under runs/shapes_ldm/samples and the shapes oracle's
scores of the samples in metrics.jsonl (sample/object_recall, ...).
Settings: 32 px scenes with one object (16 x 16 x 4 latents of the two-level VAE), latents encoded once
(model.cache_latents) as posterior means (model.latents=mean), logit-normal training timesteps, min-SNR-5 loss
weighting, lr 1e-3, batch 16, EMA 0.995 with warm-up; UNet (16, 32, 64) with cross-attention at 8 x 8 and 4 x 4,
the attention-pooled caption added to its time embedding (addition_embed_type=text), which scales and shifts the
normalised ResNet features (resnet_time_scale_shift=scale_shift); a 2-layer CLIP text encoder of width 64 and 16
positions learned with it (1.11M + 0.14M parameters).
Measured on 2 CPU cores, the README commands on a fresh workdir (VAE of shapes_vae.py, then this config): VAE
4 min 50 s; LDM 20 min 35 s (68 s encoding the 20,000 training images, 31 s compiling, 8,800 steps at 8.1 steps/s,
sample grids every 2,200 steps); 25 min 25 s for both, within the 30-minute target. On 96 test captions (the evaluate
command above: 25 DDIM steps, guidance 4) the shapes oracle finds 42.7 % of the captioned objects with the right
colour and shape (precision 45.1 %, colour recall 93.8 %): 52.6 % of those of colour-shape pairs seen in training
and 0 % of the held-out purple stars (object_recall/seen, /held_out); per shape triangle 93 %, circle 64 %,
square 63 %, diamond 50 %, heart 50 %, ring 29 %, cross 20 %, star 0 % (23 captions, 18 of them the held-out purple
star). The training sample grids (16 captions) score 19 / 25 / 19 / 31 % at steps 2,200 / 4,400 / 6,600 / 8,800.
Variant "large" (`shapes_ldm.py:large` in the train and evaluate commands): UNet (32, 64, 128) with the time
embedding added, not scale-shifted, and 32 text positions (4.15M + 0.14M parameters), the same 8,800 steps. LDM
43 min 13 s (76 s encoding, 31 s compiling, 3.6 steps/s; the isolated step ran at 4.7 steps/s that morning), 48
min 8 s with the VAE, OVER the 30-minute target, for better samples: object recall 72.9 % (precision 77.8 %, colour
recall 93.8 %; seen pairs 85.9 %, held-out 16.7 %); per shape circle 93 %, square 100 %, triangle 93 %, diamond
88 %, heart 100 % (4 captions), ring 86 % (7), cross 70 %, star 22 % (23 captions, 18 of them the held-out purple
star). With the previous VAE (batch 32, 9 min 42 s) it scored 66.7 %.
With either UNet the shapes appear late and suddenly. The large one's training sample grids (16 captions) score
25 / 38 / 56 / 81 % at steps 2,200 / 4,400 / 6,600 / 8,800, and the evaluate command 17.7 / 45.8 / 66.7 % at 4,400 /
6,600 / 8,800 (the same recipe on the previous VAE, resumed at those steps): at the 30-minute mark (about 5,000
steps at 3.6 steps/s) its samples are partly still blobs of the right colour (at 4,400 steps: circles 79 %,
squares 50 %, other shapes 0-10 %). The steps go into binding the shape word, not into drawing: sampled without a
caption, the large UNet after 4,400 steps already draws circles, squares, triangles, diamonds and hearts (the
oracle finds a shape in 84 of 96 samples), but swapping the shape word in the caption of a noised test latent
(t = 400, 64 scenes) changes its noise prediction by 0.03 RMS, against 0.08 for the colour word; after 8,800 steps
by 0.12 (this config's UNet after 8,800 steps: 0.06). The large UNet binds faster per step but takes twice as long
per step (isolated step, same afternoon: about 240 against 130 ms), so within 30 minutes this config is ahead.
Shapes are learned one at a time, the convex ones first, and the loss says little about it: lr 2e-3 with cosine
decay reached a lower loss at 4,400 steps (0.018 against 0.022) and 15.6 % object recall.
`--restore_from=0,400,600` on the evaluate command shows where a model loses the objects: the test scenes' own
latents noised to DDIM timestep 351 / 551 and denoised with their captions (64 captions, 20 steps).
Other settings measured (object recall / colour recall on 96 test captions unless stated):
- On the large UNet: resnet_time_scale_shift=scale_shift 15.6 / 94.8 % after 4,400 steps (17.7 % without, previous
  VAE); with 16 text positions as well 15.6 / 93.8 % after 3,300 steps, the loss within 2 % of the run without.
  Neither helped; this config keeps both (no harm measured, and 16 positions shorten the attention over tokens).
  UNet (24, 48, 96): 205 ms per isolated step, hardly faster than (32, 64, 128).
- The previous version of this config (posterior samples, uniform timesteps, no pooled caption, batch 32,
  2,400 steps, 18 min 58 s): 13.5 / 85.4 %, the chance level of 8 shapes; restoration from t = 351 / 551 kept
  68.8 / 50.0 % of the objects (the VAE alone 78.1 %): it kept shapes it was shown but did not draw them from
  the caption.
- The shapes need both steps and images: batch 8 (7.1 steps/s): 10.4 / 83.3 % after 4,400 steps and 8.3 / 74.0 %
  after 6,600; batch 32: 12.5 / 83.3 % after 2,200 steps and 16.7 / 86.5 % after 3,300 (the images of 6,600 batch-16
  steps, which gave 45.8 %). lr 2e-3 constant: 15.6 / 82.3 % after 3,300 steps. Residual branches (ResNet conv2,
  transformer proj_out, conv_out) initialised at zero, as ADM: a lower loss (0.020 against 0.022 after 4,400 steps)
  but 15.6 / 68.8 %.
- Where the step time goes (large UNet, isolated step, idle machine, 211 ms): UNet forward + backward 185 ms
  for 11.6 GFLOP, the text encoder 6 ms, the optimizer and EMA most of the rest. The compiled UNet gradient is
  ~2,500 XLA CPU operations, and a UNet of a tenth of the FLOPs, (16, 16, 16), still takes 75 ms: narrowing the
  UNet gains less than its FLOPs suggest (a quarter, this config's (16, 32, 64), halves the step). Neither bf16
  compute (218 ms) nor XLA CPU flags (oneDNN, XNNPACK, 512-bit vectors, scheduler) beat the fp32 default, whose
  own runs spread from 185 to 237 ms on this machine.
- 1,200 steps of batch 32 from the same seed: logit-normal timesteps 13.5 / 76.0 %; the pooled caption in the
  time embedding 9.4 / 59.4 %; min-SNR gamma 0.25 7.3 / 61.5 %; posterior-mean latents 8.3 / 59.4 %, although
  their loss is half (0.033 against 0.060: a 600-step VAE's posterior noise, std ~0.25 against ~1.5 for the
  means, is data the UNet cannot predict); v-prediction with mean latents 10.4 / 86.5 %; UNet (64, 128, 128) at
  1.1 steps/s 9.4 / 79.2 %, its loss at 1,200 steps equal to (32, 64, 128)'s at 2,400.
- Guidance and sampling steps change little before the shapes are learned: after 4,400 steps, on another
  caption per test scene, guidance 1 / 2 / 4 gave 9.4 / 14.6 / 15.6 % and 50 DDIM steps 14.6 %; guidance 8 /
  12 on a batch-16 run without the three options 15.6 / 13.5 % (16.7 % at guidance 4).
- 1-3 objects, 8 x 8 x 4 latents (three-level VAE, whose own reconstructions keep only 40 % of the objects
  recognisable), UNet (48, 96, 96): object recall 13.2 %, colour 57.9 % after 2,400 steps (14 min 27 s), 18.4 /
  73.7 % after 6,000. 1-3 objects, 16 x 16 latents: 7.9 / 5.3 / 2.6 % object recall at steps 600 / 1200 / 1800.
- 64 px, 16 x 16 latents of a three-level VAE, UNet (32, 64, 64): 1.4 steps/s, blobs after 1,000 steps.
Variant "tiny" is the test-suite version; "large" the wider UNet above; "finetune" starts from a diffusers SD
folder (--config.model.pretrained=DIR) instead of training from scratch.
"""
import ml_collections

from diffusion_jax.training.common import optimizer_config
from diffusion_jax.training.ldm_trainer import ldm_model_config
from t2i_common import config as common
from t2i_common.data.config import data_config

VARIANTS = ("", "large", "pairs", "tiny", "finetune")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of shapes_ldm.py; use one of {VARIANTS}.")
  config = common.experiment_config(
      data=data_config("shapes", image_sizes=(32,)), model=ldm_model_config(),
      optimizer=optimizer_config(learning_rate=1e-3, warmup_steps=200),
      train={"batch_size": 16, "num_steps": 8800, "export_ema": True}, checkpoint_every=1100,
      images_every=2200)
  config.data.shapes.resolution = 32  # as the VAE of shapes_vae.py: 16 x 16 x 4 latents
  # One object per scene: with 1-3 objects (`--config.data.shapes.max_objects=3`) the budget goes to binding
  # words to objects and colours come out worse (figures above).
  config.data.shapes.max_objects = 1
  config.model.cache_latents = True
  # The posterior mean: a briefly trained VAE's posterior noise is data the UNet cannot predict.
  config.model.latents = "mean"
  # More training steps at mid noise, where an object's outline forms.
  config.model.timestep_sampling.kind = "logit_normal"
  config.model.snr_gamma = 5.0
  config.model.ema_decay = 0.995
  # Cross-attention at 8 x 8 and 4 x 4 only: at 16 x 16 it made a training step 30 % slower (isolated step
  # benchmark) and one object needs no finer word placement. The attention-pooled caption is also added to the
  # time embedding, so the 16 x 16 ResNet blocks that draw the outline see the shape word too, and (with
  # scale_shift) scales and shifts their features.
  # (16, 32, 64) channels: a step takes about half the time of (32, 64, 128) (isolated step 130 against 240 ms),
  # which within the 30-minute budget is worth more than the wider UNet's faster learning per step (figures above).
  config.model.unet.update(
      block_out_channels=(16, 32, 64), norm_num_groups=8,
      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
      up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
      addition_embed_type="text", resnet_time_scale_shift="scale_shift")
  # 16 positions: the longest of 15,000 one-object training captions was 15 tokens (longer ones are truncated
  # with a warning); fewer padding tokens to attend over.
  config.model.text.max_position_embeddings = 16
  if variant == "large":
    # The wider UNet: better samples in 48 minutes instead of 25 (figures above).
    config.model.unet.update(block_out_channels=(32, 64, 128), norm_num_groups=16,
                             resnet_time_scale_shift="default")
    config.model.text.max_position_embeddings = 32
  if variant == "pairs":
    # One or two objects with plain captions ("a red circle and a blue square"): the scenes of the neglect study
    # (docs/neglect_study.md). The one-object scenes bind each shape word alone, which the two-object captions
    # cannot teach as directly; twice the steps of the one-object model and half again its images, for two
    # objects per caption.
    config.data.shapes.update(min_objects=1, max_objects=2, caption_style="plain", num_train=30000)
    config.train.num_steps = 17600
    config.logging.images_every_steps = 4400
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
    config.model.latents = "sample"  # as SD was trained
    config.model.timestep_sampling.kind = "uniform"
    config.optimizer.learning_rate = 1e-5
    config.train.batch_size = 8
  return config
