"""Loss functions of latent-diffusion training: the denoising objective and the VAE's objectives."""
from __future__ import annotations

import jax
import jax.numpy as jnp

PREDICTION_TYPES = ("epsilon", "v_prediction")
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")


def sample_timesteps(key: jax.Array, batch: int, num_train_timesteps: int, kind: str = "uniform",
                     mean: float = 0.0, std: float = 1.0) -> jax.Array:
  """[B] int32 training timesteps in [0, T): uniform, or logit-normal (t / T = sigmoid(mean + std * n))."""
  if kind == "uniform":
    return jax.random.randint(key, (batch,), 0, num_train_timesteps)
  if kind == "logit_normal":
    u = jax.nn.sigmoid(mean + std * jax.random.normal(key, (batch,)))
    return jnp.clip(jnp.floor(u * num_train_timesteps), 0, num_train_timesteps - 1).astype(jnp.int32)
  raise ValueError(f"timestep sampling {kind!r} is not one of {TIMESTEP_SAMPLINGS}; set "
                   "config.model.timestep_sampling.kind.")


def add_noise(alphas_cumprod: jax.Array, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
  """Forward process q(x_t | x_0): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; t is [B] integer timesteps."""
  abar = _per_example(alphas_cumprod[t], x0)
  return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise


def training_target(prediction_type: str, alphas_cumprod: jax.Array, x0: jax.Array, noise: jax.Array,
                    t: jax.Array) -> jax.Array:
  """What the UNet must predict: the noise (epsilon) or the velocity v = sqrt(abar) eps - sqrt(1-abar) x0."""
  if prediction_type == "epsilon":
    return noise
  if prediction_type == "v_prediction":
    abar = _per_example(alphas_cumprod[t], x0)
    return jnp.sqrt(abar) * noise - jnp.sqrt(1.0 - abar) * x0
  raise ValueError(f"prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES}.")


def _per_example(values: jax.Array, like: jax.Array) -> jax.Array:
  return values.reshape((-1,) + (1,) * (like.ndim - 1)).astype(like.dtype)


def mse(prediction: jax.Array, target: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """Mean squared error; `weights` [B] (e.g. min_snr_weights) scales each example's mean."""
  per_example = jnp.mean(jnp.square(prediction.astype(jnp.float32) - target.astype(jnp.float32)),
                         axis=tuple(range(1, prediction.ndim)))
  return jnp.mean(per_example if weights is None else weights * per_example)


def min_snr_weights(prediction_type: str, alphas_cumprod: jax.Array, t: jax.Array, gamma: float) -> jax.Array:
  """Min-SNR-gamma loss weights [B] (Hang et al. 2023): min(SNR, gamma) / SNR for epsilon targets and
  min(SNR, gamma) / (SNR + 1) for v targets. They stop the many easy low-noise steps from dominating the
  gradient, which speeds up convergence severalfold; gamma = 5 is the paper's choice."""
  abar = alphas_cumprod[t].astype(jnp.float32)
  snr = abar / (1.0 - abar)
  clipped = jnp.minimum(snr, gamma)
  if prediction_type == "epsilon":
    return clipped / snr
  if prediction_type == "v_prediction":
    return clipped / (snr + 1.0)
  raise ValueError(f"prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES}.")


def kl_to_standard_normal(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, 1)) summed over latent dims, averaged over the batch (as SD's VAE)."""
  kl = 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar, axis=tuple(range(1, mean.ndim)))
  return jnp.mean(kl)


def reconstruction_loss(reconstruction: jax.Array, images: jax.Array, l2_weight: float = 0.0) -> jax.Array:
  """Mean absolute error (sharp edges) plus an optional squared-error term (stable colours)."""
  diff = reconstruction.astype(jnp.float32) - images.astype(jnp.float32)
  return jnp.mean(jnp.abs(diff)) + l2_weight * jnp.mean(jnp.square(diff))


def hinge_discriminator_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def hinge_generator_loss(logits_fake: jax.Array) -> jax.Array:
  return -jnp.mean(logits_fake)
