"""DPM-Solver++ multistep (Lu et al. 2022), orders 1 and 2 ("2M"), as diffusers' DPMSolverMultistepScheduler.

Each step converts the model output to a data prediction x0 and extrapolates in log-SNR (lambda) using the
current and previous x0; the first step, and the last with the default final_sigmas_type="zero", are first order.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.schedulers.common import (BETA_OPTIONS, Scheduler, SchedulerConfigError, SchedulerState,
                                             karras_sigmas, per_step, sigma_to_t, tables_to_jnp, zeros_history)


class DPMSolverMultistepScheduler(Scheduler):
  """x_t = cx * x + c0 * x0_now + c1 * x0_prev, with per-step coefficients computed in set_timesteps."""
  CLASS_NAME = "DPMSolverMultistepScheduler"
  DEFAULTS = {
      "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
      "trained_betas": None, "solver_order": 2, "prediction_type": "epsilon", "thresholding": False,
      "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0, "algorithm_type": "dpmsolver++",
      "solver_type": "midpoint", "lower_order_final": True, "euler_at_final": False, "use_karras_sigmas": False,
      "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_lu_lambdas": False,
      "use_flow_sigmas": False, "flow_shift": 1.0, "final_sigmas_type": "zero",
      "lambda_min_clipped": -float("inf"), "variance_type": None, "timestep_spacing": "linspace",
      "steps_offset": 0, "rescale_betas_zero_snr": False, "use_dynamic_shifting": False,
      "time_shift_type": "exponential",
  }
  SUPPORTED = {
      **BETA_OPTIONS, "solver_order": (1, 2), "prediction_type": ("epsilon", "v_prediction", "sample"),
      "algorithm_type": ("dpmsolver++",), "solver_type": ("midpoint", "heun"), "lower_order_final": (True, False),
      "euler_at_final": (True, False), "use_karras_sigmas": (True, False), "final_sigmas_type": ("zero", "sigma_min"),
      "lambda_min_clipped": None, "timestep_spacing": ("leading", "trailing", "linspace"), "steps_offset": None,
      "rescale_betas_zero_snr": (True, False),
  }
  # flow_shift only acts with use_flow_sigmas (unsupported, so off).
  IGNORED = Scheduler.IGNORED + ("flow_shift",)

  def __init__(self, config=None, **overrides):
    super().__init__(config, **overrides)
    if self.config["rescale_betas_zero_snr"]:
      self.alphas_cumprod[-1] = 2.0 ** -24

  def _timesteps(self, n: int) -> np.ndarray:
    c = self.config
    n_train, spacing = c["num_train_timesteps"], c["timestep_spacing"]
    acp = self.alphas_cumprod
    lambda_t = np.log(np.sqrt(acp)) - np.log(np.sqrt(1 - acp))
    # lambda_min_clipped drops the noisiest training timesteps (for cosine schedules).
    last = n_train - int(np.searchsorted(lambda_t[::-1], c["lambda_min_clipped"]))
    if spacing == "linspace":
      return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":
      return (np.arange(n + 1) * (last // (n + 1)))[::-1][:-1].astype(np.int64) + c["steps_offset"]
    if spacing == "trailing":
      return np.arange(last, 0, -n_train / n).round().astype(np.int64) - 1
    raise SchedulerConfigError(f"timestep_spacing={spacing!r}: use leading, trailing or linspace.")

  def set_timesteps(self, num_inference_steps: int, sample_shape: Sequence[int]) -> SchedulerState:
    self._check_steps(num_inference_steps)
    c = self.config
    ts = self._timesteps(num_inference_steps)
    acp = self.alphas_cumprod
    all_sigmas = ((1 - acp) / acp) ** 0.5
    if c["use_karras_sigmas"]:
      sigmas = karras_sigmas(all_sigmas[::-1], num_inference_steps, None, None)
      ts = sigma_to_t(sigmas, np.log(all_sigmas))
      if c["beta_schedule"] != "squaredcos_cap_v2":
        ts = ts.round()
      ts = ts.astype(np.int64)
    else:
      sigmas = np.interp(ts, np.arange(len(all_sigmas)), all_sigmas)
    last = all_sigmas[0] if c["final_sigmas_type"] == "sigma_min" else 0.0
    sigmas = np.concatenate([sigmas, [last]]).astype(np.float32).astype(np.float64)
    n = len(ts)

    alpha = 1 / (sigmas ** 2 + 1) ** 0.5
    sig = sigmas * alpha
    with np.errstate(divide="ignore", invalid="ignore"):
      lam = np.log(alpha) - np.log(sig)  # +inf at sigma = 0
      order = np.full(n, c["solver_order"])
      order[0] = 1
      final_first_order = (c["euler_at_final"] or (c["lower_order_final"] and n < 15)
                           or c["final_sigmas_type"] == "zero")
      if final_first_order:
        order[-1] = 1
      cx, c0, c1 = np.zeros(n), np.zeros(n), np.zeros(n)
      for i in range(n):
        a_t, s_t, s_s0 = alpha[i + 1], sig[i + 1], sig[i]
        h = lam[i + 1] - lam[i]
        big_a = a_t * (np.exp(-h) - 1.0)
        cx[i], c0[i] = s_t / s_s0, -big_a
        if order[i] == 2:
          r0 = (lam[i] - lam[i - 1]) / h
          # D1 = (x0_now - x0_prev) / r0 enters with weight k.
          k = -0.5 * big_a if c["solver_type"] == "midpoint" else a_t * ((np.exp(-h) - 1.0) / h + 1.0)
          c0[i] += k / r0
          c1[i] = -k / r0
    # Data prediction x0 = in_x * x + in_m * model_output at sigma_s.
    pred = c["prediction_type"]
    if pred == "epsilon":
      in_x, in_m = 1 / alpha[:-1], -sig[:-1] / alpha[:-1]
    elif pred == "v_prediction":
      in_x, in_m = alpha[:-1], -sig[:-1]
    else:
      in_x, in_m = np.zeros(n), np.ones(n)
    tables = {"in_x": in_x, "in_m": in_m, "cx": cx, "c0": c0, "c1": c1}
    return SchedulerState(timesteps=jnp.asarray(ts, jnp.int32), tables=tables_to_jnp(tables),
                          init_noise_sigma=jnp.float32(1.0), history=zeros_history(sample_shape, prev_x0=0))

  def step(self, state: SchedulerState, model_output: jax.Array, step_index: jax.Array, sample: jax.Array,
           noise: Optional[jax.Array] = None) -> tuple[jax.Array, SchedulerState]:
    del noise
    in_x, in_m, cx, c0, c1 = per_step(state, step_index, "in_x", "in_m", "cx", "c0", "c1")
    x0 = in_x * sample + in_m * model_output.astype(jnp.float32)
    prev = cx * sample + c0 * x0 + c1 * state.history["prev_x0"]
    return prev, state.replace(history={"prev_x0": x0})
