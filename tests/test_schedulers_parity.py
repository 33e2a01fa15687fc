"""Scheduler parity with diffusers: timesteps and whole multi-step trajectories with a fake model.

Both sides run the same deterministic "model" (a smooth function of sample and timestep) over every step, so
errors in any coefficient, in the ordering of timesteps or in the solver history show up in the trajectory.
Ours runs as one jitted lax.scan; tolerance 1e-5 relative to max(1, |x|).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need PyTorch")
diffusers = pytest.importorskip("diffusers", reason="parity tests need diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from diffusion_jax.schedulers import SchedulerConfigError, load_scheduler  # noqa: E402

SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
      "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "clip_sample": False,
      "trained_betas": None}
SHAPE = (2, 4, 6, 6)

CASES = [
    # (diffusers class, our name, extra config, steps)
    ("DDIMScheduler", "ddim", {}, 10),
    ("DDIMScheduler", "ddim", {"timestep_spacing": "trailing", "set_alpha_to_one": True}, 7),
    ("DDIMScheduler", "ddim", {"timestep_spacing": "linspace", "beta_schedule": "squaredcos_cap_v2",
                               "clip_sample": True}, 6),
    ("PNDMScheduler", "pndm", {}, 12),
    ("PNDMScheduler", "pndm", {"timestep_spacing": "trailing", "beta_schedule": "linear", "beta_start": 0.0001,
                               "beta_end": 0.02}, 5),
    ("PNDMScheduler", "pndm", {"timestep_spacing": "linspace"}, 2),
    ("EulerDiscreteScheduler", "euler", {}, 10),
    ("EulerDiscreteScheduler", "euler", {"timestep_spacing": "leading"}, 8),
    ("EulerDiscreteScheduler", "euler", {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"}, 6),
    ("DPMSolverMultistepScheduler", "dpm", {}, 10),
    ("DPMSolverMultistepScheduler", "dpm", {"use_karras_sigmas": True, "timestep_spacing": "trailing"}, 20),
    ("DPMSolverMultistepScheduler", "dpm", {"solver_type": "heun", "final_sigmas_type": "sigma_min",
                                            "lower_order_final": False, "timestep_spacing": "leading"}, 16),
    ("DDPMScheduler", "ddpm", {"clip_sample": True}, 10),
    ("DDPMScheduler", "ddpm", {"variance_type": "fixed_large", "timestep_spacing": "trailing"}, 5),
]


def fake_model(x, t, lib):
  """A smooth deterministic stand-in for the UNet (same formula in torch and jnp)."""
  t = t / 1000.0
  return 0.6 * lib.sin(x) + 0.3 * x * lib.cos(3.0 * t) + 0.1 * t


def run_diffusers(cls_name, config, steps, x_init, eta):
  sched = getattr(diffusers, cls_name).from_config(config)
  sched.set_timesteps(steps)
  x = torch.from_numpy(x_init) * sched.init_noise_sigma
  gen, noise_gen = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
  traj, noises = [], []
  for t in sched.timesteps:
    x_in = sched.scale_model_input(x, t)
    m = fake_model(x_in, t.to(torch.float32), torch)
    noise = torch.zeros(SHAPE)
    if cls_name == "DDPMScheduler":
      if t > 0:  # DDPM draws its noise from the generator only when t > 0; replay the same draws
        noise = torch.randn(SHAPE, generator=noise_gen)
      x = sched.step(m, t, x, generator=gen).prev_sample
    elif cls_name == "DDIMScheduler" and eta > 0:
      noise = torch.randn(SHAPE, generator=noise_gen)
      x = sched.step(m, t, x, eta=eta, variance_noise=noise).prev_sample
    else:
      x = sched.step(m, t, x).prev_sample
    traj.append(x.numpy().copy())
    noises.append(noise.numpy())
  return sched, np.stack(traj), np.stack(noises)


def run_ours(name, config, steps, x_init, noises, eta):
  sched = load_scheduler(config, name=name)
  kwargs = {"eta": eta} if name == "ddim" else {}
  state = sched.set_timesteps(steps, SHAPE, **kwargs)

  @jax.jit
  def trajectory(x, state, noises):
    def body(carry, inp):
      x, state = carry
      i, noise = inp
      m = fake_model(sched.scale_model_input(state, x, i), state.timesteps[i].astype(jnp.float32), jnp)
      x, state = sched.step(state, m, i, x, noise=noise if state.stochastic else None)
      return (x, state), x
    _, traj = jax.lax.scan(body, (x * state.init_noise_sigma, state), (jnp.arange(state.num_steps), noises))
    return traj

  return state, np.asarray(trajectory(jnp.asarray(x_init), state, jnp.asarray(noises)))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("cls_name,name,extra,steps", CASES,
                         ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_trajectory_matches_diffusers(cls_name, name, extra, steps, prediction_type):
  config = {**SD, **extra, "prediction_type": prediction_type, "_class_name": cls_name}
  x_init = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
  theirs, traj_t, noises = run_diffusers(cls_name, config, steps, x_init, eta=0.0)
  state, traj_o = run_ours(name, config, steps, x_init, noises, eta=0.0)
  # Integer timesteps must be identical; Karras sigmas give fractional ones (equal to float32 rounding).
  np.testing.assert_allclose(np.asarray(state.timesteps, np.float64), theirs.timesteps.numpy(), rtol=1e-6, atol=0)
  assert abs(float(state.init_noise_sigma) - float(theirs.init_noise_sigma)) <= 1e-5 * float(theirs.init_noise_sigma)
  err = np.max(np.abs(traj_o - traj_t) / np.maximum(1.0, np.abs(traj_t)))
  assert err <= 1e-5, f"max relative trajectory error {err:.2e}"


def test_ddim_eta_matches_diffusers():
  config = {**SD, "_class_name": "DDIMScheduler"}
  x_init = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
  _, traj_t, noises = run_diffusers("DDIMScheduler", config, 8, x_init, eta=0.7)
  _, traj_o = run_ours("ddim", config, 8, x_init, noises, eta=0.7)
  np.testing.assert_allclose(traj_o, traj_t, atol=1e-5, rtol=1e-5)


def test_sd_pndm_default_has_51_timesteps():
  state = load_scheduler({**SD, "_class_name": "PNDMScheduler"}).set_timesteps(50, (1, 4, 8, 8))
  ts = np.asarray(state.timesteps)
  assert state.num_steps == 51
  assert list(ts[:4]) == [981, 961, 961, 941] and ts[-1] == 1


@pytest.mark.parametrize("config,name,match", [
    ({**SD, "_class_name": "PNDMScheduler", "skip_prk_steps": False}, None, "skip_prk_steps"),
    ({**SD, "_class_name": "DDIMScheduler", "thresholding": True}, None, "thresholding"),
    ({**SD, "_class_name": "DDIMScheduler", "beta_schedule": "sigmoid"}, None, "beta_schedule"),
    ({**SD, "_class_name": "DDIMScheduler", "timestep_spacin": "leading"}, None, "timestep_spacin"),
    ({**SD, "_class_name": "LMSDiscreteScheduler"}, None, "name="),
    ({**SD, "_class_name": "DDIMScheduler"}, "heun", "unknown scheduler"),
    ({**SD, "_class_name": "DPMSolverMultistepScheduler", "solver_order": 3}, None, "solver_order"),
])
def test_unsupported_options_fail_clearly(config, name, match):
  with pytest.raises(SchedulerConfigError, match=match):
    load_scheduler(config, name=name)


def test_stochastic_step_requires_noise():
  sched = load_scheduler({**SD, "_class_name": "DDPMScheduler"})
  state = sched.set_timesteps(4, SHAPE)
  with pytest.raises(ValueError, match="noise"):
    sched.step(state, jnp.zeros(SHAPE), 0, jnp.zeros(SHAPE))


@pytest.mark.parametrize("name", ["ddpm", "ddim", "pndm", "euler", "dpm++2m"])
def test_saved_config_loads_in_diffusers_and_back(name, tmp_path):
  ours = load_scheduler({**SD, "_class_name": "PNDMScheduler", "prediction_type": "v_prediction"}, name=name)
  ours.save_pretrained(str(tmp_path))
  theirs = getattr(diffusers, ours.CLASS_NAME).from_pretrained(str(tmp_path))
  theirs.set_timesteps(7)
  state = load_scheduler(str(tmp_path)).set_timesteps(7, SHAPE)
  np.testing.assert_allclose(np.asarray(state.timesteps, np.float64), theirs.timesteps.numpy(), rtol=1e-6)
  assert theirs.config.prediction_type == "v_prediction" and theirs.config.steps_offset == 1


def test_add_noise_matches_diffusers():
  ours = load_scheduler({**SD, "_class_name": "DDPMScheduler"})
  theirs = diffusers.DDPMScheduler.from_config({**SD})
  rng = np.random.default_rng(3)
  x, noise = rng.standard_normal(SHAPE).astype(np.float32), rng.standard_normal(SHAPE).astype(np.float32)
  t = np.array([0, 999])
  expected = theirs.add_noise(torch.from_numpy(x), torch.from_numpy(noise), torch.from_numpy(t)).numpy()
  np.testing.assert_allclose(np.asarray(ours.add_noise(jnp.asarray(x), jnp.asarray(noise), jnp.asarray(t))),
                             expected, rtol=1e-6, atol=1e-6)
