"""AttnGAN training (the reference main.py with a *_attn2.yml) on the shared training loop.

    python -m attngan_jax.train --config configs/attngan/attngan_shapes.py --workdir runs/attngan_shapes \
        --config.damsm.workdir=runs/damsm_shapes

Each iteration updates every stage's discriminator (d_step), then the generator against them with the DAMSM and
KL terms (g_step); attngan_jax.gan.trainer has the details. The frozen DAMSM comes from config.damsm: a
pretrain_damsm run folder (damsm.workdir) or converted encoders (damsm.text_encoder, damsm.image_encoder and
damsm.vocab_file = the reference's captions.pickle; attngan_jax.gan.damsm). Every logging.images_every_steps the
EMA generator draws fixed test captions: <workdir>/samples/step_<step>.png and attention_step_<step>.png, with
the shapes oracle's scores on shapes data; every eval.every_steps > 0 the R-precision of generated images goes to
eval/* scalars. At the end the EMA generator is written to <workdir>/generator (read by attngan_jax.sample and
attngan_jax.evaluate). Runs resume from the latest checkpoint in the workdir; SIGTERM saves and exits.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import ml_collections

from attngan_jax.gan.hooks import EvalHook, SampleHook
from attngan_jax.gan.trainer import GENERATOR_DIR, GANTrainer, GANTrainLoop, load_damsm
from t2i_common import parallel
from t2i_common.data.loader import make_loader
from t2i_common.entry_point import run_config_command

log = logging.getLogger(__name__)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains to config.train.num_steps and exports the generator; returns paths, the step and timings."""
  os.makedirs(workdir, exist_ok=True)
  parallel.initialize_distributed(config.distributed)
  mesh = parallel.create_mesh(config.mesh)
  damsm = load_damsm(config, workdir)
  damsm_dirs = {"text_encoder": config.damsm.text_encoder, "image_encoder": config.damsm.image_encoder}
  if config.damsm.random_init and not (config.damsm.text_encoder or config.damsm.workdir):
    damsm_dirs = damsm.export(os.path.join(workdir, "damsm"))  # sampling and evaluation need it too
  elif config.damsm.workdir and not config.damsm.text_encoder:
    export = os.path.join(config.damsm.workdir, "damsm")
    damsm_dirs = {"text_encoder": os.path.join(export, "text_encoder"),
                  "image_encoder": os.path.join(export, "image_encoder")}
  damsm_dirs = {k: os.path.abspath(v) for k, v in damsm_dirs.items()}
  damsm_dirs["vocab_file"] = os.path.abspath(config.damsm.vocab_file) if config.damsm.vocab_file else ""
  trainer = GANTrainer(config, damsm)
  loader = make_loader(config.data, "train", global_batch_size=config.train.batch_size, seed=config.seed,
                       text_transform=trainer.text_transform)
  hooks = [SampleHook(trainer, mesh, config.logging.images_every_steps, workdir)]
  eval_hook = None
  if config.eval.every_steps > 0:
    eval_hook = EvalHook(trainer, mesh, config.eval.every_steps)
    hooks.append(eval_hook)
  loop = GANTrainLoop(config, workdir, trainer, loader=loader, mesh=mesh, hooks=hooks)
  state = loop.run()
  result: dict[str, Any] = {"step": loop.step, "compile_time_s": loop.compile_time_s}
  if loop.preempted:
    result["preempted"] = True
    return result
  result["generator"] = trainer.export(state, os.path.join(workdir, GENERATOR_DIR), damsm_dirs)
  if eval_hook is not None and eval_hook.last:
    result["eval"] = {k: v for k, v in eval_hook.last.items() if k != "grid"}
  return result


def main(args) -> None:
  print(train_and_evaluate(args.config, args.workdir))


if __name__ == "__main__":
  run_config_command(main, config_kind="AttnGAN",
                     workdir_help="Run folder: checkpoints, metrics, samples, the exported generator.")
