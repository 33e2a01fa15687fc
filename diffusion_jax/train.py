"""Trains a latent-diffusion component: `python -m diffusion_jax.train --config CONFIG.py[:variant] --workdir W`.

config.model.kind picks the trainer: "vae" (AutoencoderKL, written to W/vae) or "ldm" (UNet + text encoder on the
latents of a trained VAE, written with the VAE, tokenizer and scheduler as a diffusers pipeline folder to
W/pipeline, loadable by `diffusion_jax.from_pretrained` and by diffusers). Runs resume from the latest
checkpoint in W; SIGTERM saves and exits.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import ml_collections

from t2i_common import parallel
from t2i_common.data.loader import iterate_eval, make_loader
from t2i_common.entry_point import run_config_command
from t2i_common.train_loop import TrainLoop

log = logging.getLogger(__name__)

KINDS = ("vae", "ldm")


def _test_batch(config: ml_collections.ConfigDict, n: int, text_transform=None) -> dict:
  it = iterate_eval(config.data, "test", n, text_transform, seed=config.seed)
  return next(iter(it))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs training to config.train.num_steps and exports the result; returns paths and final metrics."""
  kind = config.model.kind
  if kind not in KINDS:
    raise ValueError(f"config.model.kind={kind!r}; expected one of {KINDS}.")
  os.makedirs(workdir, exist_ok=True)
  parallel.initialize_distributed(config.distributed)
  if kind == "vae":
    from diffusion_jax.training.vae_trainer import ReconstructionHook, VAETrainer
    trainer = VAETrainer(config)
    loader = make_loader(config.data, "train", global_batch_size=config.train.batch_size, seed=config.seed)
    test_images = _test_batch(config, config.train.num_eval_images)["image"]
    hooks = [ReconstructionHook(trainer, test_images, config.logging.images_every_steps, workdir)]
    loop = TrainLoop(config, workdir, init_state=trainer.init_state, train_step=trainer.train_step,
                     loader=loader, hooks=hooks)
    state = loop.run()
    if loop.preempted:
      return {"preempted": True, "step": loop.step}
    params = jax.device_get(state.params["vae"])
    scale = trainer.measure_scaling_factor(params, loader)
    folder = trainer.save(os.path.join(workdir, "vae"), params, scale)
    log.info("VAE written to %s (scaling_factor %.5f)", folder, scale)
    return {"vae": folder, "scaling_factor": scale, "step": loop.step}
  from diffusion_jax.training.ldm_trainer import LDMTrainer
  trainer = LDMTrainer(config, workdir)
  if config.model.cache_latents:
    trainer.build_latent_cache()
  # With cached latents the batches need no images (the cache is looked up by index).
  loader = make_loader(config.data, "train", global_batch_size=config.train.batch_size, seed=config.seed,
                       text_transform=trainer.text_transform, with_images=not config.model.cache_latents)
  loop = TrainLoop(config, workdir, init_state=trainer.init_state, train_step=trainer.train_step,
                   loader=loader, hooks=trainer.hooks(workdir), batch_to_device=trainer.batch_to_device)
  state = loop.run()
  if loop.preempted:
    return {"preempted": True, "step": loop.step}
  result = trainer.export(state, os.path.join(workdir, "pipeline"))
  result["step"] = loop.step
  return result


def main(args) -> None:
  print(train_and_evaluate(args.config, args.workdir))


if __name__ == "__main__":
  run_config_command(main, config_kind="Training",
                     workdir_help="Run folder: checkpoints, metrics, pictures, exported models.")
