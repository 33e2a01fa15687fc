"""DDPM ancestral sampling (Ho et al. 2020), as diffusers' DDPMScheduler."""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.schedulers.common import (BETA_OPTIONS, Scheduler, SchedulerState, per_step, spaced_timesteps,
                                             tables_to_jnp, to_x0_and_eps)


class DDPMScheduler(Scheduler):
  """x_{t-1} ~ N(mu(x_t, x0_hat), sigma_t^2): needs `noise` at every step."""
  CLASS_NAME = "DDPMScheduler"
  DEFAULTS = {
      "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
      "trained_betas": None, "variance_type": "fixed_small", "clip_sample": True, "prediction_type": "epsilon",
      "thresholding": False, "dynamic_thresholding_ratio": 0.995, "clip_sample_range": 1.0,
      "sample_max_value": 1.0, "timestep_spacing": "leading", "steps_offset": 0, "rescale_betas_zero_snr": False,
  }
  SUPPORTED = {
      **BETA_OPTIONS, "variance_type": ("fixed_small", "fixed_small_log", "fixed_large"),
      "clip_sample": (True, False), "prediction_type": ("epsilon", "v_prediction", "sample"),
      "clip_sample_range": None, "timestep_spacing": ("leading", "trailing", "linspace"), "steps_offset": None,
      "rescale_betas_zero_snr": (True, False),
  }

  def set_timesteps(self, num_inference_steps: int, sample_shape: Sequence[int]) -> SchedulerState:
    self._check_steps(num_inference_steps)
    c = self.config
    ts = spaced_timesteps(c["timestep_spacing"], c["num_train_timesteps"], num_inference_steps, c["steps_offset"])
    acp = self.alphas_cumprod.astype(np.float64)
    a_t = acp[ts]
    # The previous timestep is the next one in the schedule; after the last one comes alpha_bar = 1.
    a_prev = np.concatenate([acp[ts[1:]], [1.0]])
    beta_t = 1 - a_t / a_prev
    if c["variance_type"] == "fixed_large":
      var = beta_t
    else:
      var = np.maximum((1 - a_prev) / (1 - a_t) * beta_t, 1e-20)
    tables = {
        "alpha_prod": a_t,
        "coef_x0": a_prev ** 0.5 * beta_t / (1 - a_t),
        "coef_x": (1 - beta_t) ** 0.5 * (1 - a_prev) / (1 - a_t),
        "std": np.where(ts > 0, var ** 0.5, 0.0),
    }
    return SchedulerState(timesteps=jnp.asarray(ts, jnp.int32), tables=tables_to_jnp(tables),
                          init_noise_sigma=jnp.float32(1.0), history={}, stochastic=True)

  def step(self, state: SchedulerState, model_output: jax.Array, step_index: jax.Array, sample: jax.Array,
           noise: Optional[jax.Array] = None) -> tuple[jax.Array, SchedulerState]:
    noise = self._need_noise(noise, "DDPM")
    a_t, c_x0, c_x, std = per_step(state, step_index, "alpha_prod", "coef_x0", "coef_x", "std")
    x0, _ = to_x0_and_eps(self.config["prediction_type"], model_output, sample, a_t)
    if self.config["clip_sample"]:
      r = self.config["clip_sample_range"]
      x0 = jnp.clip(x0, -r, r)
    return c_x0 * x0 + c_x * sample + std * noise, state
