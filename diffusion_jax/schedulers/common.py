"""What every scheduler shares: config validation, beta schedules, timestep spacing and the state pytree.

Schedulers are split in two halves so they run inside one jit:
- `set_timesteps(num_inference_steps, sample_shape)` runs in numpy (the number of steps is static) and
  returns a `SchedulerState` holding per-step coefficient tables plus the solver history as arrays;
- `step(state, model_output, step_index, sample, noise=None)` is pure jnp and indexes the tables with a
  traced `step_index`, so it can sit inside `lax.fori_loop` / `lax.scan`.
Options are read from a diffusers `scheduler_config.json`; an option we do not implement raises
`SchedulerConfigError` instead of being silently ignored.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


class SchedulerConfigError(ValueError):
  """A scheduler config with an unknown or unsupported option."""


# Options of diffusers schedulers other than the five implemented here. diffusers' `from_config` ignores
# options meant for another scheduler class (SD configs carry e.g. `skip_prk_steps` into DDIM), so we do too;
# anything outside this list and the classes' own options is a typo and fails.
_OTHER_DIFFUSERS_OPTIONS = frozenset({
    "predict_x0", "solver_p", "disable_corrector", "shift_terminal", "use_dynamic_shifting",
    "time_shift_type", "base_image_seq_len", "max_image_seq_len", "base_shift", "max_shift", "shift",
    "invert_sigmas", "sigma_data", "rho", "s_noise", "noise_sampler_seed", "use_flow_sigmas", "flow_shift",
})


@struct.dataclass
class SchedulerState:
  """Everything `step` needs, as arrays (a pytree that can be a jit argument or a loop carry).

  timesteps: [num_steps] what the model is conditioned on at each step (int32, or float32 for Euler).
  tables: per-step coefficient arrays, each with leading dimension num_steps.
  init_noise_sigma: scalar the initial Gaussian latents are multiplied by.
  history: solver memory (e.g. PNDM's past model outputs), shaped like the sample.
  stochastic: whether `step` needs `noise` (DDPM, DDIM with eta > 0); static.
  """
  timesteps: jax.Array
  tables: dict[str, jax.Array]
  init_noise_sigma: jax.Array
  history: dict[str, jax.Array]
  stochastic: bool = struct.field(pytree_node=False, default=False)

  @property
  def num_steps(self) -> int:
    """Number of model evaluations (PNDM with skip_prk_steps has one more than num_inference_steps)."""
    return int(self.timesteps.shape[0])


class Scheduler:
  """Base class: holds a validated diffusers-style config; subclasses implement the numerics.

  Subclasses set CLASS_NAME (the diffusers class), DEFAULTS (every option of that class with diffusers'
  default) and SUPPORTED (option -> tuple of accepted values, or None for any value). An option in DEFAULTS
  but not in SUPPORTED is accepted only at its default value.
  """
  CLASS_NAME: str = ""
  DEFAULTS: dict[str, Any] = {}
  SUPPORTED: dict[str, Optional[tuple]] = {}
  # Options whose value does not matter while the feature they tune is off (checked by the subclass).
  IGNORED: tuple[str, ...] = ("dynamic_thresholding_ratio", "sample_max_value")

  def __init__(self, config: Optional[Mapping[str, Any]] = None, **overrides: Any):
    self.config = self._resolve(dict(config or {}), overrides)
    self.betas = make_betas(self.config)
    # Accumulate in float64 and round once, as torch.cumprod does for float32 (parity with diffusers).
    self.alphas_cumprod = np.cumprod((1.0 - self.betas).astype(np.float64)).astype(np.float32)

  # ---- config ------------------------------------------------------------------------------------
  @classmethod
  def _resolve(cls, config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    known = set().union(*(c.DEFAULTS for c in _all_scheduler_classes())) | _OTHER_DIFFUSERS_OPTIONS
    for key in overrides:
      if key not in cls.DEFAULTS:
        raise SchedulerConfigError(
            f"{cls.__name__} has no option {key!r}; its options are: {', '.join(sorted(cls.DEFAULTS))}.")
    config.update(overrides)
    unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
    if unknown:
      raise SchedulerConfigError(
          f"unknown scheduler option(s) {unknown} (not an option of any diffusers scheduler); "
          "fix or remove them in scheduler_config.json.")
    resolved = dict(cls.DEFAULTS)
    resolved.update({k: v for k, v in config.items() if k in cls.DEFAULTS})
    for key, value in resolved.items():
      if key in cls.IGNORED:
        continue
      allowed = cls.SUPPORTED[key] if key in cls.SUPPORTED else (cls.DEFAULTS[key],)
      if allowed is not None and not _value_in(value, allowed):
        raise SchedulerConfigError(
            f"{cls.CLASS_NAME} option {key}={value!r} is not supported by diffusion_jax "
            f"(supported: {', '.join(map(repr, allowed))}). Change it in scheduler_config.json or pick another "
            "scheduler.")
    if resolved.get("thresholding"):
      raise SchedulerConfigError("thresholding=True (dynamic thresholding) is not supported; set it to false.")
    return resolved

  def to_diffusers_config(self) -> dict[str, Any]:
    """The config as diffusers writes it (with `_class_name`), loadable by diffusers and by us."""
    out = {"_class_name": self.CLASS_NAME}
    for key, value in self.config.items():
      if isinstance(value, float) and math.isinf(value):
        value = float(value)  # json writes -Infinity, which diffusers' json reader accepts
      out[key] = value
    return out

  def save_pretrained(self, folder: str) -> None:
    """Writes folder/scheduler_config.json."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "scheduler_config.json"), "w") as f:
      json.dump(self.to_diffusers_config(), f, indent=2, sort_keys=True)

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.config})"

  # ---- numerics (subclasses) ---------------------------------------------------------------------
  def set_timesteps(self, num_inference_steps: int, sample_shape: Sequence[int]) -> SchedulerState:
    raise NotImplementedError

  def scale_model_input(self, state: SchedulerState, sample: jax.Array, step_index: jax.Array) -> jax.Array:
    """Input scaling before the model (identity except for sigma-parameterised schedulers)."""
    del state, step_index
    return sample

  def step(self, state: SchedulerState, model_output: jax.Array, step_index: jax.Array, sample: jax.Array,
           noise: Optional[jax.Array] = None) -> tuple[jax.Array, SchedulerState]:
    raise NotImplementedError

  def add_noise(self, original: jax.Array, noise: jax.Array, timesteps: jax.Array) -> jax.Array:
    """Forward process q(x_t | x_0) at integer timesteps [B] (for training)."""
    acp = jnp.asarray(self.alphas_cumprod)[timesteps]
    shape = (-1,) + (1,) * (original.ndim - 1)
    return (jnp.sqrt(acp).reshape(shape) * original + jnp.sqrt(1.0 - acp).reshape(shape) * noise)

  def _check_steps(self, num_inference_steps: int) -> None:
    total = self.config["num_train_timesteps"]
    if not isinstance(num_inference_steps, (int, np.integer)) or not 1 <= num_inference_steps <= total:
      raise ValueError(f"num_inference_steps must be an integer in [1, {total}] (the training timesteps); "
                       f"got {num_inference_steps!r}.")

  @staticmethod
  def _need_noise(noise: Optional[jax.Array], name: str) -> jax.Array:
    if noise is None:
      raise ValueError(f"{name} is stochastic here: pass `noise` (a standard normal array shaped like the sample).")
    return noise


def _value_in(value: Any, allowed: tuple) -> bool:
  # True == 1 in Python; an option declared boolean must not accept 1 (and vice versa).
  return any(value == a and isinstance(value, bool) == isinstance(a, bool) for a in allowed)


def _all_scheduler_classes() -> list[type[Scheduler]]:
  def walk(cls):
    for sub in cls.__subclasses__():
      yield sub
      yield from walk(sub)
  return list(walk(Scheduler))


# ---- beta schedules ------------------------------------------------------------------------------------
def _cosine_betas(num: int, max_beta: float = 0.999) -> np.ndarray:
  """Glide's squaredcos_cap_v2 schedule: betas discretising alpha_bar(t) = cos((t + 0.008) / 1.008 * pi / 2)^2."""
  def alpha_bar(t):
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
  return np.array([min(1 - alpha_bar((i + 1) / num) / alpha_bar(i / num), max_beta) for i in range(num)],
                  np.float32)


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
  """Lin et al. 2023 (Algorithm 1): shift and scale sqrt(alpha_bar) so the last timestep has zero SNR."""
  alphas_bar_sqrt = np.sqrt(np.cumprod((1.0 - betas).astype(np.float64)).astype(np.float32))
  first, last = alphas_bar_sqrt[0].copy(), alphas_bar_sqrt[-1].copy()
  alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
  alphas_bar = alphas_bar_sqrt ** 2
  alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
  return (1.0 - alphas).astype(np.float32)


def make_betas(config: Mapping[str, Any]) -> np.ndarray:
  """float32 betas [num_train_timesteps] from beta_schedule / beta_start / beta_end / trained_betas."""
  num = config["num_train_timesteps"]
  if config.get("trained_betas") is not None:
    betas = np.asarray(config["trained_betas"], np.float32)
    if betas.shape != (num,):
      raise SchedulerConfigError(f"trained_betas has {betas.size} values but num_train_timesteps is {num}.")
  elif config["beta_schedule"] == "linear":
    betas = np.linspace(config["beta_start"], config["beta_end"], num, dtype=np.float64).astype(np.float32)
  elif config["beta_schedule"] == "scaled_linear":
    # Latent diffusion's schedule: linear in sqrt(beta).
    root = np.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, num).astype(np.float32)
    betas = root ** 2
  elif config["beta_schedule"] == "squaredcos_cap_v2":
    betas = _cosine_betas(num)
  else:
    raise SchedulerConfigError(
        f"beta_schedule={config['beta_schedule']!r} is not supported; use linear, scaled_linear or "
        "squaredcos_cap_v2.")
  if config.get("rescale_betas_zero_snr"):
    betas = _rescale_zero_terminal_snr(betas)
  return betas


BETA_OPTIONS = {
    "num_train_timesteps": None, "beta_start": None, "beta_end": None,
    "beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2"), "trained_betas": None,
}


# ---- timestep spacing ----------------------------------------------------------------------------------
def spaced_timesteps(spacing: str, num_train: int, num_steps: int, steps_offset: int) -> np.ndarray:
  """Descending int64 timesteps for the leading / trailing / linspace spacings (Lin et al. 2023, Table 2)."""
  if spacing == "linspace":
    return np.linspace(0, num_train - 1, num_steps).round()[::-1].astype(np.int64)
  if spacing == "leading":
    return (np.arange(num_steps) * (num_train // num_steps))[::-1].astype(np.int64) + steps_offset
  if spacing == "trailing":
    return np.round(np.arange(num_train, 0, -num_train / num_steps)).astype(np.int64) - 1
  raise SchedulerConfigError(f"timestep_spacing={spacing!r} is not supported; use leading, trailing or linspace.")


def sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
  """Fractional training timestep of each sigma, interpolating log-sigma linearly (k-diffusion's rule)."""
  log_sigma = np.log(np.maximum(sigmas, 1e-10))
  dists = log_sigma - log_sigmas[:, None]
  low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
  w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
  return (1 - w) * low + w * (low + 1)


def karras_sigmas(sigmas_desc: np.ndarray, num_steps: int, sigma_min: Optional[float],
                  sigma_max: Optional[float]) -> np.ndarray:
  """Karras et al. 2022 rho=7 spacing between sigma_max and sigma_min (defaults: the schedule's ends)."""
  lo = sigma_min if sigma_min is not None else float(sigmas_desc[-1])
  hi = sigma_max if sigma_max is not None else float(sigmas_desc[0])
  ramp = np.linspace(0, 1, num_steps)
  rho = 7.0
  return (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho


# ---- shared jnp helpers --------------------------------------------------------------------------------
def per_step(state: SchedulerState, step_index: jax.Array, *names: str) -> list[jax.Array]:
  """The scalars of the named tables at `step_index` (traced)."""
  return [state.tables[n][step_index] for n in names]


def to_x0_and_eps(prediction_type: str, model_output: jax.Array, sample: jax.Array, alpha_prod: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
  """Predicted clean sample and noise from the model output under the variance-preserving process."""
  beta_prod = 1 - alpha_prod
  if prediction_type == "epsilon":
    return (sample - beta_prod ** 0.5 * model_output) / alpha_prod ** 0.5, model_output
  if prediction_type == "v_prediction":
    return (alpha_prod ** 0.5 * sample - beta_prod ** 0.5 * model_output,
            alpha_prod ** 0.5 * model_output + beta_prod ** 0.5 * sample)
  if prediction_type == "sample":
    return model_output, (sample - alpha_prod ** 0.5 * model_output) / beta_prod ** 0.5
  raise SchedulerConfigError(f"prediction_type={prediction_type!r}: use epsilon, v_prediction or sample.")


def tables_to_jnp(tables: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
  out = {}
  for k, v in tables.items():
    v = np.asarray(v)
    out[k] = jnp.asarray(v.astype(np.int32) if v.dtype.kind in "iu" else v.astype(np.float32))
  return out


def zeros_history(sample_shape: Sequence[int], **counts: int) -> dict[str, jax.Array]:
  """History buffers: name -> zeros [count, *sample_shape] (count 0 means a single sample-shaped array)."""
  return {k: jnp.zeros(((n,) if n else ()) + tuple(sample_shape), jnp.float32) for k, n in counts.items()}
