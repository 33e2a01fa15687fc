"""The factored denoising loop (`Pipeline.denoise`) with a stand-in UNet: guidance, scheduler stepping and the
per-step latent update hook that Attend-and-Excite plugs in (a jax.grad inside the jitted loop)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.pipeline import Pipeline
from diffusion_jax.schedulers import load_scheduler

SD = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
      "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "num_train_timesteps": 1000}


class FakeUNet(nn.Module):
  """eps(x, t, context): a smooth function using every input, with one learnable scale."""

  @nn.compact
  def __call__(self, x, t, context):
    w = self.param("w", nn.initializers.constant(0.7), ())
    c = context.mean(axis=(1, 2))[:, None, None, None]
    return jnp.tanh(w * x + c) * (1.0 + t / 1000.0)


def make_pipe(name):
  unet = FakeUNet()
  x, ctx = jnp.zeros((2, 4, 4, 4)), jnp.zeros((2, 3, 8))
  params = {"unet": unet.init(jax.random.key(0), x, 0.0, ctx)}
  return Pipeline(tokenizer=None, text_encoder=None, unet=unet, vae=None,
                  scheduler=load_scheduler(SD, name=name), params=params)


def reference_loop(pipe, params, latents, cond, uncond, steps, scale, update=None):
  """The same loop unrolled in Python (jitted as a whole only to keep the test fast)."""
  return jax.jit(lambda *a: _unrolled(pipe, *a, steps, scale, update))(params, latents, cond, uncond)


def _unrolled(pipe, params, latents, cond, uncond, steps, scale, update):
  state = pipe.scheduler.set_timesteps(steps, latents.shape)
  for i in range(state.num_steps):
    t = state.timesteps[i]
    if update is not None:
      latents = update(params, latents, i, t, cond)
    x = pipe.scheduler.scale_model_input(state, latents, i)
    eu = pipe.unet.apply(params["unet"], x, t, uncond)
    ec = pipe.unet.apply(params["unet"], x, t, cond)
    latents, state = pipe.scheduler.step(state, eu + scale * (ec - eu), i, latents)
  return latents


@pytest.mark.parametrize("name", ["pndm", "euler"])
def test_denoise_matches_step_by_step_loop(name):
  pipe = make_pipe(name)
  k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
  latents = jax.random.normal(k1, (2, 4, 4, 4))
  cond, uncond = jax.random.normal(k2, (2, 3, 8)), jax.random.normal(k3, (2, 3, 8))
  state = pipe.scheduler.set_timesteps(5, latents.shape)
  fn = jax.jit(lambda p, x, c, u, s, g: pipe.denoise(p, x, c, u, s, guidance_scale=g))
  ours = fn(pipe.params, latents * state.init_noise_sigma, cond, uncond, state, 5.0)
  ref = reference_loop(pipe, pipe.params, latents * state.init_noise_sigma, cond, uncond, 5, 5.0)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_latent_update_hook_runs_a_gradient_step_inside_the_loop():
  pipe = make_pipe("pndm")
  latents = jax.random.normal(jax.random.key(2), (2, 4, 4, 4))
  cond, uncond = jnp.ones((2, 3, 8)), jnp.zeros((2, 3, 8))
  calls = []

  def update(params, x, i, t, cond):
    # Attend-and-Excite's shape: a loss on a conditional UNet pass, gradient w.r.t. the latents, early steps only.
    calls.append(i)  # traced once
    loss = lambda z: jnp.sum(pipe.unet.apply(params["unet"], z, t, cond) ** 2)
    return jnp.where(i < 2, x - 0.1 * jax.grad(loss)(x), x)

  state = pipe.scheduler.set_timesteps(4, latents.shape)
  fn = jax.jit(lambda p, x, s: pipe.denoise(p, x, cond, uncond, s, guidance_scale=7.5, latent_update_fn=update))
  with_hook = fn(pipe.params, latents, state)
  assert len(calls) == 1  # one trace, in the fori_loop body
  ref = reference_loop(pipe, pipe.params, latents, cond, uncond, 4, 7.5, update)
  np.testing.assert_allclose(np.asarray(with_hook), np.asarray(ref), rtol=1e-5, atol=1e-5)
  plain = jax.jit(lambda p, x, s: pipe.denoise(p, x, cond, uncond, s, guidance_scale=7.5))(pipe.params, latents,
                                                                                             state)
  assert float(jnp.abs(with_hook - plain).max()) > 1e-3


def test_stochastic_scheduler_needs_a_key():
  pipe = make_pipe("ddpm")
  latents = jnp.zeros((2, 4, 4, 4))
  state = pipe.scheduler.set_timesteps(3, latents.shape)
  with pytest.raises(ValueError, match="noise_key"):
    pipe.denoise(pipe.params, latents, jnp.zeros((2, 3, 8)), None, state)
  out = pipe.denoise(pipe.params, latents, jnp.zeros((2, 3, 8)), None, state, noise_key=jax.random.key(0))
  assert np.isfinite(np.asarray(out)).all() and float(jnp.abs(out).max()) > 0
