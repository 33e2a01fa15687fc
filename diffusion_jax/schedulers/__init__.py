"""Jit-friendly diffusion schedulers read from diffusers' scheduler_config.json.

    sched = load_scheduler("path/to/sd-folder", name="ddim")
    state = sched.set_timesteps(50, latents.shape)            # numpy, outside jit
    latents = latents * state.init_noise_sigma
    def body(i, carry):                                        # inside jit
      latents, state = carry
      eps = model(sched.scale_model_input(state, latents, i), state.timesteps[i])
      return sched.step(state, eps, i, latents)
    latents, state = jax.lax.fori_loop(0, state.num_steps, body, (latents, state))
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional, Union

from diffusion_jax.schedulers.common import Scheduler, SchedulerConfigError, SchedulerState
from diffusion_jax.schedulers.ddim import DDIMScheduler
from diffusion_jax.schedulers.ddpm import DDPMScheduler
from diffusion_jax.schedulers.dpm_solver import DPMSolverMultistepScheduler
from diffusion_jax.schedulers.euler import EulerDiscreteScheduler
from diffusion_jax.schedulers.pndm import PNDMScheduler

SCHEDULERS: dict[str, type[Scheduler]] = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,
    "euler": EulerDiscreteScheduler,
    "dpm++2m": DPMSolverMultistepScheduler,
}
_ALIASES = {"plms": "pndm", "dpm": "dpm++2m", "dpmsolver++": "dpm++2m", "dpm_solver": "dpm++2m",
            "dpmsolver": "dpm++2m", "euler_discrete": "euler"}
_BY_CLASS = {cls.CLASS_NAME: cls for cls in SCHEDULERS.values()}


def scheduler_class(name: str) -> type[Scheduler]:
  """The scheduler for a short name (ddim, pndm, ...) or a diffusers class name (DDIMScheduler, ...)."""
  if name in _BY_CLASS:
    return _BY_CLASS[name]
  key = _ALIASES.get(name.lower(), name.lower())
  if key not in SCHEDULERS:
    raise SchedulerConfigError(
        f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)} (or a diffusers class name: "
        f"{', '.join(_BY_CLASS)}).")
  return SCHEDULERS[key]


def _read_config(folder_or_config: Union[str, os.PathLike, Mapping[str, Any]]) -> dict[str, Any]:
  if isinstance(folder_or_config, Mapping):
    return dict(folder_or_config)
  path = os.fspath(folder_or_config)
  candidates = [path] if path.endswith(".json") else [
      os.path.join(path, "scheduler", "scheduler_config.json"), os.path.join(path, "scheduler_config.json")]
  for candidate in candidates:
    if os.path.isfile(candidate):
      with open(candidate) as f:
        try:
          return json.load(f)
        except json.JSONDecodeError as e:
          raise SchedulerConfigError(f"{candidate} is not valid JSON: {e}") from None
  raise FileNotFoundError(f"no scheduler config found: looked for {' and '.join(candidates)}.")


def load_scheduler(folder_or_config: Union[str, os.PathLike, Mapping[str, Any]],
                   name: Optional[str] = None) -> Scheduler:
  """Builds a scheduler from a diffusers pipeline folder, a scheduler folder, a .json file or a dict.

  name: pick another scheduler than the config's `_class_name` (e.g. "ddim" on an SD 1.x folder whose
  config says PNDMScheduler); the shared options (betas, prediction_type, steps_offset, ...) carry over
  the way diffusers' `from_config` does.
  """
  config = _read_config(folder_or_config)
  if name is None:
    class_name = config.get("_class_name")
    if class_name is None:
      raise SchedulerConfigError("the scheduler config has no _class_name; pass name= (e.g. 'pndm' or 'ddim').")
    if class_name not in _BY_CLASS:
      raise SchedulerConfigError(
          f"scheduler class {class_name!r} is not implemented in diffusion_jax; pass name= one of "
          f"{', '.join(SCHEDULERS)} to sample with another scheduler on the same noise schedule.")
    cls = _BY_CLASS[class_name]
  else:
    cls = scheduler_class(name)
  return cls(config)


__all__ = ["DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler",
           "PNDMScheduler", "SCHEDULERS", "Scheduler", "SchedulerConfigError", "SchedulerState", "load_scheduler",
           "scheduler_class"]
