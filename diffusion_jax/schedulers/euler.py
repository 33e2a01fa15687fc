"""Euler method on the probability-flow ODE in sigma space (Karras et al. 2022), as diffusers'
EulerDiscreteScheduler with s_churn = 0 (deterministic)."""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.schedulers.common import (BETA_OPTIONS, Scheduler, SchedulerConfigError, SchedulerState,
                                             karras_sigmas, per_step, sigma_to_t, tables_to_jnp)


class EulerDiscreteScheduler(Scheduler):
  """Latents live at scale sigma: the model input is divided by sqrt(sigma^2 + 1) (`scale_model_input`)."""
  CLASS_NAME = "EulerDiscreteScheduler"
  DEFAULTS = {
      "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
      "trained_betas": None, "prediction_type": "epsilon", "interpolation_type": "linear",
      "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
      "sigma_min": None, "sigma_max": None, "timestep_spacing": "linspace", "timestep_type": "discrete",
      "steps_offset": 0, "rescale_betas_zero_snr": False, "final_sigmas_type": "zero",
  }
  SUPPORTED = {
      **BETA_OPTIONS, "prediction_type": ("epsilon", "v_prediction", "sample"), "use_karras_sigmas": (True, False),
      "sigma_min": None, "sigma_max": None, "timestep_spacing": ("leading", "trailing", "linspace"),
      "steps_offset": None, "rescale_betas_zero_snr": (True, False), "final_sigmas_type": ("zero", "sigma_min"),
  }

  def __init__(self, config=None, **overrides):
    super().__init__(config, **overrides)
    if self.config["rescale_betas_zero_snr"]:
      # Zero terminal SNR makes sigma infinite; diffusers pins alpha_bar there to 2^-24.
      self.alphas_cumprod[-1] = 2.0 ** -24

  def set_timesteps(self, num_inference_steps: int, sample_shape: Sequence[int]) -> SchedulerState:
    self._check_steps(num_inference_steps)
    c = self.config
    n_train, spacing = c["num_train_timesteps"], c["timestep_spacing"]
    if spacing == "linspace":
      # Unlike the DDPM family, Euler keeps fractional timesteps here.
      ts = np.linspace(0, n_train - 1, num_inference_steps, dtype=np.float32)[::-1].copy()
    elif spacing == "leading":
      ts = (np.arange(num_inference_steps) * (n_train // num_inference_steps))[::-1].astype(np.float32)
      ts += c["steps_offset"]
    elif spacing == "trailing":
      ts = np.arange(n_train, 0, -n_train / num_inference_steps).round().astype(np.float32) - 1
    else:
      raise SchedulerConfigError(f"timestep_spacing={spacing!r}: use leading, trailing or linspace.")
    acp = self.alphas_cumprod
    all_sigmas = ((1 - acp) / acp) ** 0.5
    sigmas = np.interp(ts, np.arange(len(all_sigmas)), all_sigmas)
    if c["use_karras_sigmas"]:
      sigmas = karras_sigmas(sigmas, num_inference_steps, c["sigma_min"], c["sigma_max"])
      ts = sigma_to_t(sigmas, np.log(all_sigmas))
    last = all_sigmas[0] if c["final_sigmas_type"] == "sigma_min" else 0.0
    sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
    init = sigmas.max() if spacing in ("linspace", "trailing") else (sigmas.max() ** 2 + 1) ** 0.5
    tables = {"sigma": sigmas[:-1], "sigma_next": sigmas[1:]}
    return SchedulerState(timesteps=jnp.asarray(ts, jnp.float32), tables=tables_to_jnp(tables),
                          init_noise_sigma=jnp.float32(init), history={})

  def scale_model_input(self, state: SchedulerState, sample: jax.Array, step_index: jax.Array) -> jax.Array:
    (sigma,) = per_step(state, step_index, "sigma")
    return sample / (sigma ** 2 + 1) ** 0.5

  def step(self, state: SchedulerState, model_output: jax.Array, step_index: jax.Array, sample: jax.Array,
           noise: Optional[jax.Array] = None) -> tuple[jax.Array, SchedulerState]:
    del noise
    sigma, sigma_next = per_step(state, step_index, "sigma", "sigma_next")
    pred = self.config["prediction_type"]
    if pred == "epsilon":
      x0 = sample - sigma * model_output
    elif pred == "v_prediction":
      x0 = model_output * (-sigma / (sigma ** 2 + 1) ** 0.5) + sample / (sigma ** 2 + 1)
    else:
      x0 = model_output
    derivative = (sample - x0) / sigma
    return sample + derivative * (sigma_next - sigma), state
