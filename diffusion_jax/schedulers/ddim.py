"""DDIM (Song et al. 2021), as diffusers' DDIMScheduler; eta > 0 adds DDPM-like noise."""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.schedulers.common import (BETA_OPTIONS, Scheduler, SchedulerState, per_step, spaced_timesteps,
                                             tables_to_jnp, to_x0_and_eps)


class DDIMScheduler(Scheduler):
  """x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - std^2) eps_hat + std * noise."""
  CLASS_NAME = "DDIMScheduler"
  DEFAULTS = {
      "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
      "trained_betas": None, "clip_sample": True, "set_alpha_to_one": True, "steps_offset": 0,
      "prediction_type": "epsilon", "thresholding": False, "dynamic_thresholding_ratio": 0.995,
      "clip_sample_range": 1.0, "sample_max_value": 1.0, "timestep_spacing": "leading",
      "rescale_betas_zero_snr": False,
  }
  SUPPORTED = {
      **BETA_OPTIONS, "clip_sample": (True, False), "set_alpha_to_one": (True, False), "steps_offset": None,
      "prediction_type": ("epsilon", "v_prediction", "sample"), "clip_sample_range": None,
      "timestep_spacing": ("leading", "trailing", "linspace"), "rescale_betas_zero_snr": (True, False),
  }

  def set_timesteps(self, num_inference_steps: int, sample_shape: Sequence[int], eta: float = 0.0
                    ) -> SchedulerState:
    """eta: 0 is deterministic DDIM, 1 is DDPM-like (then `step` needs noise)."""
    self._check_steps(num_inference_steps)
    c = self.config
    n_train = c["num_train_timesteps"]
    ts = spaced_timesteps(c["timestep_spacing"], n_train, num_inference_steps, c["steps_offset"])
    acp = self.alphas_cumprod.astype(np.float64)
    final = 1.0 if c["set_alpha_to_one"] else acp[0]
    # diffusers steps back by num_train // num_steps whatever the spacing; we keep that for parity.
    prev = ts - n_train // num_inference_steps
    a_t = acp[ts]
    a_prev = np.where(prev >= 0, acp[np.maximum(prev, 0)], final)
    var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * var ** 0.5
    tables = {"alpha_prod": a_t, "coef_x0": a_prev ** 0.5,
              "coef_eps": np.maximum(1 - a_prev - std ** 2, 0.0) ** 0.5, "std": std}
    return SchedulerState(timesteps=jnp.asarray(ts, jnp.int32), tables=tables_to_jnp(tables),
                          init_noise_sigma=jnp.float32(1.0), history={}, stochastic=bool(eta > 0))

  def step(self, state: SchedulerState, model_output: jax.Array, step_index: jax.Array, sample: jax.Array,
           noise: Optional[jax.Array] = None) -> tuple[jax.Array, SchedulerState]:
    a_t, c_x0, c_eps, std = per_step(state, step_index, "alpha_prod", "coef_x0", "coef_eps", "std")
    x0, eps = to_x0_and_eps(self.config["prediction_type"], model_output, sample, a_t)
    if self.config["clip_sample"]:
      r = self.config["clip_sample_range"]
      x0 = jnp.clip(x0, -r, r)
    prev = c_x0 * x0 + c_eps * eps
    if state.stochastic:
      prev = prev + std * self._need_noise(noise, "DDIM with eta > 0")
    return prev, state
