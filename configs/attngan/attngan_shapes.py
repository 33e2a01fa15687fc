"""AttnGAN on the built-in shapes data: 16 and 32 px stages on the shapes DAMSM (CPU-sized).

    python -m attngan_jax.pretrain_damsm --config configs/attngan/damsm_shapes.py --workdir runs/damsm_shapes
    python -m attngan_jax.train --config configs/attngan/attngan_shapes.py --workdir runs/attngan_shapes \
        --config.damsm.workdir=runs/damsm_shapes
    python -m attngan_jax.sample --workdir runs/attngan_shapes --caption "a red circle and a blue square" \
        --seeds 0-3 --out runs/attngan_shapes/cli_samples
    python -m attngan_jax.evaluate --config configs/attngan/attngan_shapes.py --workdir runs/attngan_shapes

Settings: base size 16 with two stages (16 and 32 px; one attention stage at 16 x 16), gf_dim 16, df_dim 16,
r_num 1, 128-d text features (the shapes DAMSM's), lambda 5, batch 16, Adam lr 2e-4 for G and the discriminators
(the reference's), 18,000 iterations, EMA 0.999 with warm-up; samples with their shapes-oracle scores, the
R-precision of 500 generated images and a checkpoint every 3,000 steps.
Expected (evaluate: 2,000 images from 1-3-object test captions): DAMSM R-precision 70.1 +- 2.5 % (64.3 % by a DAMSM
trained with another seed, --config.eval.judge_damsm=RUN), shapes oracle object recall 15.4 %, all present 6.7 %
(colour recall 67.0 %, shape recall 20.1 %; circles 59.8 %, crosses and stars below 2 %); with
--config.loss.damsm_lambda=0 / 1: R-precision 32.9 / 59.7 %, object recall 9.5 / 15.1 % (the paper's lambda
ablation). Training takes 29 min 2 s on 2 idle CPU cores (10.6 iterations/s, compile 10 s, the hooks' pictures and
evaluations included). The generator learns the caption's colours, layout and the round shapes (circles, rings,
hearts), rarely crosses, stars or diamonds. With instance noise on the discriminators' inputs falling to 0 at
12,000 iterations (--config.loss.d_input_noise=0.3 --config.loss.d_input_noise_steps=12000; seeds 0 and 1):
R-precision 74.3 / 70.0 %, object recall 17.3 / 16.4 %. What was tried and measured: docs/attngan_shapes.md.

Variant "short" (`attngan_shapes.py:short`): the first recipe, 6,000 iterations with a discriminator learning rate
of 5e-5; 10 min 31 s on 2 idle cores; R-precision 60.1 +- 2.8 %, object recall 5.2 %, all present 2.4 %.

Variant "tiny" is the test-suite version: 16 and 32 px, tiny widths, a randomly initialised DAMSM (no other
run needed), 3 steps; train -> sample -> evaluate in about a minute:
    python -m attngan_jax.train --config configs/attngan/attngan_shapes.py:tiny --workdir /tmp/attngan_tiny
    python -m attngan_jax.sample --workdir /tmp/attngan_tiny --caption "a red circle" --seeds 0-3 \
        --out /tmp/attngan_tiny/cli_samples
    python -m attngan_jax.evaluate --config configs/attngan/attngan_shapes.py:tiny --workdir /tmp/attngan_tiny
"""
import ml_collections

from attngan_jax.gan.train_config import attngan_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant not in ("", "short", "tiny"):
    raise ValueError(f"unknown variant {variant!r} of attngan_shapes.py; use '', 'short' or 'tiny'.")
  config = attngan_config("shapes", "birds", batch_size=16, num_steps=18000, damsm_lambda=5.0, images_every=3000,
                          checkpoint_every=3000, gf_dim=16, df_dim=16, r_num=1, branch_num=2, base_size=16,
                          embedding_dim=128, words_num=18)
  config.train.ema_warmup = True
  config.damsm.workdir = "runs/damsm_shapes"
  config.eval.num_images = 2000
  config.eval.every_steps = 3000
  config.eval.hook_num_images = 500
  config.eval.batch_size = 64
  config.sample.num_captions = 16
  if variant == "short":
    # The first recipe: a third of the schedule, with a slower discriminator than the reference's 2e-4 (with 2e-4
    # and 6,000 iterations the discriminators win from step 1,000 on and R-precision levels off lower).
    config.optimizer.d_lr = 5e-5
    config.train.num_steps = 6000
    config.eval.every_steps = config.logging.images_every_steps = config.checkpoint.every_steps = 1000
  if variant == "tiny":
    config.data.shapes.num_train = 64
    config.data.shapes.num_test = 16
    config.model.gf_dim = 4
    config.model.df_dim = 4
    config.model.z_dim = 8
    config.model.condition_dim = 8
    config.model.embedding_dim = 16
    config.damsm.workdir = ""
    config.damsm.random_init = True
    config.damsm.random.embed_dim = 8
    config.damsm.random.small_cnn_width = 4
    config.damsm.random.image_size = 32
    config.train.batch_size = 8
    config.train.num_steps = 3
    config.train.fast_compile = True
    config.checkpoint.every_steps = 2
    config.logging.every_steps = 1
    config.logging.images_every_steps = 3
    config.sample.num_captions = 4
    config.sample.attention_captions = 2
    config.eval.num_images = 24  # more than the 16 test images: a second pass with other captions
    config.eval.batch_size = 8
    config.eval.every_steps = 3
    config.eval.hook_num_images = 16
    config.eval.grid_images = 8
    config.eval.r_precision.num_mismatch = 7
    config.eval.r_precision.num_folds = 2
  return config
