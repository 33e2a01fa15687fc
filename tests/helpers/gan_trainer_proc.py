"""The tiny AttnGAN config (configs/attngan/attngan_shapes.py:tiny) trained by GANTrainLoop in a process of its own,
for the interruption test:
  python tests/helpers/gan_trainer_proc.py WORKDIR NUM_STEPS [--checkpoint-every K]
prints "STEP n" after every step once the earlier checkpoints are complete (so a test can kill it mid-run after a
known checkpoint) and "DONE" at the end.
GAN_PROC_CACHE_DIR: a persistent compilation cache (runs with the same programs reuse the first compile).
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import jax  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "attngan", "attngan_shapes.py")


class PrintStepAfterSaves:
  """Hook: waits until earlier checkpoints are written, then prints "STEP n": a test that kills the process at
  "STEP n" finds the checkpoint of the previous save step complete (orbax's asynchronous first save can take
  seconds on a loaded machine)."""
  every_steps = 1
  checkpointer = None

  def __call__(self, state, step, writer):
    self.checkpointer.wait()
    print(f"STEP {step}", flush=True)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("workdir")
  parser.add_argument("num_steps", type=int)
  parser.add_argument("--checkpoint-every", type=int, default=2)
  args = parser.parse_args(argv)
  jax.config.update("jax_disable_most_optimizations", True)
  if os.environ.get("GAN_PROC_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", os.environ["GAN_PROC_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  from attngan_jax.gan.trainer import GANTrainer, GANTrainLoop, load_damsm
  from t2i_common.config import load_config
  from t2i_common.data.loader import make_loader

  config = load_config(CONFIG + ":tiny", [f"train.num_steps={args.num_steps}",
                                          f"checkpoint.every_steps={args.checkpoint_every}",
                                          "logging.progress_bar=false"])
  trainer = GANTrainer(config, load_damsm(config, args.workdir))
  loader = make_loader(config.data, "train", global_batch_size=config.train.batch_size, seed=config.seed,
                       text_transform=trainer.text_transform)
  hook = PrintStepAfterSaves()
  loop = GANTrainLoop(config, args.workdir, trainer, loader=loader, hooks=[hook])
  hook.checkpointer = loop.checkpointer
  loop.run()
  print("DONE", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
