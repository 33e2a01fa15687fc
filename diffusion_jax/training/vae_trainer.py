"""VAE training: reconstruction + KL, with an optional patch discriminator (hinge loss) after a start step.

The result is written as a diffusers `vae/` folder (`<workdir>/vae`) whose `scaling_factor` is measured on the
training data (1 / std of the latents, as Stable Diffusion's 0.18215 was), so the UNet trainer can use it
directly: `config.model.vae_path = "<workdir>/vae"`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion_jax import convert
from diffusion_jax.model_configs import VAEConfig
from diffusion_jax.models.vae import AutoencoderKL
from diffusion_jax.training import objectives
from diffusion_jax.training.common import batch_images, grad_norm, make_optimizer
from diffusion_jax.training.discriminator import PatchDiscriminator
from t2i_common.logging import save_image_grid, to_uint8
from t2i_common.train_loop import TrainState

log = logging.getLogger(__name__)


def vae_model_config(size: int = 64) -> ml_collections.ConfigDict:
  """config.model for kind="vae"."""
  return ml_collections.ConfigDict({
      "kind": "vae",
      # Narrow full-resolution blocks: on CPUs the 64 x 64 convolutions dominate the step time.
      "block_out_channels": (16, 32, 64),
      "layers_per_block": 1,
      "latent_channels": 4,
      "norm_num_groups": 8,
      "mid_block_add_attention": True,
      "kl_weight": 1e-6,
      "l2_weight": 1.0,
      "discriminator": ml_collections.ConfigDict({
          "enabled": False, "channels": 32, "num_layers": 3, "weight": 0.1, "start_step": 1000}),
      "sample_size": size,
  })


class VAETrainer:
  """init_state / train_step / hooks / finish for `t2i_common.train_loop.fit`."""

  def __init__(self, config: ml_collections.ConfigDict):
    m = config.model
    self.config = config
    self.vae = AutoencoderKL(VAEConfig(
        block_out_channels=tuple(m.block_out_channels), layers_per_block=m.layers_per_block,
        latent_channels=m.latent_channels, norm_num_groups=m.norm_num_groups, sample_size=m.sample_size,
        mid_block_add_attention=m.mid_block_add_attention))
    d = m.discriminator
    self.disc = PatchDiscriminator(d.channels, d.num_layers) if d.enabled else None
    self.tx = make_optimizer(config.optimizer)

  def init_state(self, rng: jax.Array) -> TrainState:
    k_vae, k_disc, k_state = jax.random.split(rng, 3)
    params = {"vae": convert.init_variables(self.vae, k_vae)["params"]}
    if self.disc is not None:
      s = self.config.model.sample_size
      params["disc"] = self.disc.init(k_disc, jnp.zeros((1, s, s, 3)))["params"]
    return TrainState.create(params=params, tx=self.tx, rng=k_state)

  def reconstruct(self, vae_params: Any, images: jax.Array, rng: jax.Array | None):
    posterior = self.vae.apply({"params": vae_params}, images, method=AutoencoderKL.encode)
    z = posterior.mean if rng is None else posterior.sample(rng)
    return self.vae.apply({"params": vae_params}, z, method=AutoencoderKL.decode), posterior

  def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    m = self.config.model
    images = batch_images(batch)
    rng = state.step_rng()
    disc_on = self.disc is not None
    adv_weight = (jnp.where(state.step >= m.discriminator.start_step, m.discriminator.weight, 0.0)
                  if disc_on else 0.0)

    def vae_loss(vae_params):
      recon, posterior = self.reconstruct(vae_params, images, rng)
      rec = objectives.reconstruction_loss(recon, images, m.l2_weight)
      kl = objectives.kl_to_standard_normal(posterior.mean, posterior.logvar)
      loss = rec + m.kl_weight * kl
      metrics = {"rec_loss": rec, "kl": kl}
      if disc_on:
        gen = objectives.hinge_generator_loss(self.disc.apply({"params": state.params["disc"]}, recon))
        loss = loss + adv_weight * gen
        metrics["gen_loss"] = gen
      return loss, (metrics, recon)

    (loss, (metrics, recon)), g_vae = jax.value_and_grad(vae_loss, has_aux=True)(state.params["vae"])
    grads = {"vae": g_vae}
    if disc_on:
      def disc_loss(disc_params):
        apply = lambda x: self.disc.apply({"params": disc_params}, x)
        return objectives.hinge_discriminator_loss(apply(images), apply(jax.lax.stop_gradient(recon)))
      d_loss, g_disc = jax.value_and_grad(disc_loss)(state.params["disc"])
      # The discriminator learns only once it is used (its loss is meaningless before).
      grads["disc"] = jax.tree.map(lambda g: g * (adv_weight > 0), g_disc)
      metrics["disc_loss"] = d_loss
    metrics.update(loss=loss, grad_norm=grad_norm(grads["vae"]))
    return state.apply_gradients(grads), metrics

  # -- after training ---------------------------------------------------------------------------------------

  def measure_scaling_factor(self, vae_params: Any, loader, num_batches: int = 8) -> float:
    """1 / std of sampled latents over a few training batches (the latent scale the UNet should see)."""
    encode = jax.jit(lambda p, x, k: self.vae.apply({"params": p}, x, method=AutoencoderKL.encode).sample(k))
    zs = [np.asarray(encode(vae_params, batch_images(next(loader)), jax.random.key(i)))
          for i in range(num_batches)]
    return float(1.0 / np.std(np.concatenate(zs)))

  def save(self, folder: str, vae_params: Any, scaling_factor: float) -> str:
    module = self.vae.clone(config=dataclasses.replace(self.vae.config, scaling_factor=scaling_factor))
    convert.save_vae(folder, module, {"params": jax.device_get(vae_params)})
    return folder


class ReconstructionHook:
  """Writes originals (top) and reconstructions (bottom) of fixed test images, and their L1/PSNR."""

  def __init__(self, trainer: VAETrainer, images: np.ndarray, every_steps: int, workdir: str):
    self.trainer, self.images, self.every_steps = trainer, images, every_steps
    self.out_dir = os.path.join(workdir, "reconstructions")
    self._fn = jax.jit(lambda p, x: trainer.reconstruct(p, x, None)[0])

  def __call__(self, state: TrainState, step: int, writer) -> None:
    recon = np.asarray(self._fn(jax.device_get(state.params["vae"]), self.images))
    err = np.abs(np.clip(recon, -1, 1) - self.images)
    mse = np.mean(np.square((np.clip(recon, -1, 1) - self.images) / 2.0))
    writer.write_scalars(step, {"eval/rec_l1": float(err.mean()), "eval/psnr": float(-10 * np.log10(mse + 1e-12))})
    rows = [to_uint8(np.clip((x + 1.0) / 2.0, 0.0, 1.0)) for x in (self.images, recon)]
    grid = np.concatenate([np.concatenate(list(r), 1) for r in rows], 0)
    writer.write_images(step, {"reconstructions": grid})
    save_image_grid(grid[None], os.path.join(self.out_dir, f"step_{step:07d}.png"))
