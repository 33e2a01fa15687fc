"""PLMS, the linear multistep half of PNDM (Liu et al. 2022), as diffusers' PNDMScheduler with skip_prk_steps.

This is Stable Diffusion 1.x's default: at 50 steps it evaluates the model 51 times (timesteps 981, 961, 961,
941, ..., 1) because the second evaluation, at the first timestep again, turns the first step into a
second-order one. The last four model outputs are kept in the state as `ets`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.schedulers.common import (BETA_OPTIONS, Scheduler, SchedulerConfigError, SchedulerState,
                                             per_step, spaced_timesteps, tables_to_jnp, zeros_history)

# Adams-Bashforth weights on the last 1..4 outputs (oldest first), as used by PLMS.
_AB_WEIGHTS = {
    1: [0, 0, 0, 1],
    2: [0, 0, -1 / 2, 3 / 2],
    3: [0, 5 / 12, -16 / 12, 23 / 12],
    4: [-9 / 24, 37 / 24, -59 / 24, 55 / 24],
}


class PNDMScheduler(Scheduler):
  """PLMS steps only (skip_prk_steps=True, as every Stable Diffusion config sets it)."""
  CLASS_NAME = "PNDMScheduler"
  DEFAULTS = {
      "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
      "trained_betas": None, "skip_prk_steps": False, "set_alpha_to_one": False, "prediction_type": "epsilon",
      "timestep_spacing": "leading", "steps_offset": 0,
  }
  SUPPORTED = {
      **BETA_OPTIONS, "skip_prk_steps": (True, False), "set_alpha_to_one": (True, False),
      "prediction_type": ("epsilon", "v_prediction"), "timestep_spacing": ("leading", "trailing", "linspace"),
      "steps_offset": None,
  }

  def __init__(self, config=None, **overrides):
    super().__init__(config, **overrides)
    if not self.config["skip_prk_steps"]:
      raise SchedulerConfigError(
          "PNDMScheduler with skip_prk_steps=False (Runge-Kutta warm-up steps) is not supported; set "
          '"skip_prk_steps": true in scheduler_config.json (Stable Diffusion\'s setting) or use another scheduler.')

  def set_timesteps(self, num_inference_steps: int, sample_shape: Sequence[int]) -> SchedulerState:
    self._check_steps(num_inference_steps)
    c = self.config
    ratio = c["num_train_timesteps"] // num_inference_steps
    desc = spaced_timesteps(c["timestep_spacing"], c["num_train_timesteps"], num_inference_steps, c["steps_offset"])
    # Repeat the second timestep: [t0, t1, t1, t2, ..., t_last] (descending).
    ts = np.concatenate([desc[:1], desc[1:2], desc[1:]]) if num_inference_steps > 1 else desc
    n = len(ts)
    t_alpha, t_prev = ts.copy(), ts - ratio
    if n > 1:
      # Evaluation 1 completes step 0: it moves the sample saved at evaluation 0 from t1 + ratio to t1.
      t_alpha[1], t_prev[1] = ts[1] + ratio, ts[1]
    acp = self.alphas_cumprod.astype(np.float64)
    final = 1.0 if c["set_alpha_to_one"] else acp[0]
    a_t = acp[t_alpha]
    a_prev = np.where(t_prev >= 0, acp[np.maximum(t_prev, 0)], final)
    # Weights over the ets buffer (oldest first) and on the fresh output (only evaluation 1 averages it in).
    ets_w = np.zeros((n, 4))
    fresh_w = np.zeros(n)
    for i in range(n):
      if i == 1:
        ets_w[i, 3], fresh_w[i] = 0.5, 0.5
      else:
        ets_w[i] = _AB_WEIGHTS[min(i if i > 1 else 1, 4)]
    tables = {
        "alpha_prod": a_t, "ets_w": ets_w, "fresh_w": fresh_w,
        "coef_x": (a_prev / a_t) ** 0.5,
        "coef_eps": (a_prev - a_t) / (a_t * (1 - a_prev) ** 0.5 + (a_t * (1 - a_t) * a_prev) ** 0.5),
    }
    return SchedulerState(timesteps=jnp.asarray(ts, jnp.int32), tables=tables_to_jnp(tables),
                          init_noise_sigma=jnp.float32(1.0),
                          history=zeros_history(sample_shape, ets=4, cur_sample=0))

  def step(self, state: SchedulerState, model_output: jax.Array, step_index: jax.Array, sample: jax.Array,
           noise: Optional[jax.Array] = None) -> tuple[jax.Array, SchedulerState]:
    del noise
    a_t, ets_w, fresh_w, c_x, c_eps = per_step(state, step_index, "alpha_prod", "ets_w", "fresh_w", "coef_x",
                                               "coef_eps")
    ets, cur_sample = state.history["ets"], state.history["cur_sample"]
    model_output = model_output.astype(jnp.float32)
    second = step_index == 1
    # Evaluation 1 does not enter the history (it only refines step 0); every other one is appended.
    ets = jnp.where(second, ets, jnp.concatenate([ets[1:], model_output[None]], axis=0))
    eps = jnp.tensordot(ets_w, ets, axes=1) + fresh_w * model_output
    x = jnp.where(second, cur_sample, sample)
    if self.config["prediction_type"] == "v_prediction":
      eps = a_t ** 0.5 * eps + (1 - a_t) ** 0.5 * x
    prev = c_x * x - c_eps * eps
    cur_sample = jnp.where(step_index == 0, sample, cur_sample)
    return prev, state.replace(history={"ets": ets, "cur_sample": cur_sample})
