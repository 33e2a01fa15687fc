"""Text-to-image parity with diffusers' StableDiffusionPipeline on tiny random-weight folders.

Same folder, same initial latents (NCHW, as diffusers takes them), two prompts with negative prompts, a few
steps: our single-jit sampler must give the same images (output_type="np") to 2e-3 max abs.
"""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need PyTorch")
diffusers = pytest.importorskip("diffusers", reason="parity tests need diffusers")
pytest.importorskip("transformers", reason="the tiny folders need transformers")

import jax  # noqa: E402

import diffusion_jax  # noqa: E402
from diffusion_fixtures import write_tiny_sd  # noqa: E402

PROMPTS = ["a red cat", "a blue dog and a frog"]
NEGATIVE = ["blurry", "a green bird"]
TOL = 2e-3


# Compile time dominates these tiny models; XLA's optimisations do not change the numerics checked here.
pytestmark = pytest.mark.usefixtures("fast_compile_module")


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
  return write_tiny_sd(str(tmp_path_factory.mktemp("sd1")), variant="sd1")


@pytest.fixture(scope="module")
def sd2(tmp_path_factory):
  return write_tiny_sd(str(tmp_path_factory.mktemp("sd2")), variant="sd2")


@pytest.fixture(scope="module")
def ours(sd1, sd2):
  """One loaded pipeline per folder (schedulers are swapped with with_scheduler)."""
  return {"sd1": diffusion_jax.from_pretrained(sd1), "sd2": diffusion_jax.from_pretrained(sd2)}


@pytest.fixture(scope="module")
def theirs(sd1, sd2):
  def load(folder):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None,
                                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
  return {"sd1": load(sd1), "sd2": load(sd2)}


def diffusers_images(pipe, scheduler_cls, latents, steps, guidance=7.5):
  pipe.scheduler = getattr(diffusers, scheduler_cls).from_config(pipe.scheduler.config)
  with torch.no_grad():
    return pipe(PROMPTS, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=guidance,
                latents=torch.from_numpy(latents), output_type="np").images


def initial_latents(pipe, seed=0):
  h = pipe.unet.config.sample_size
  return np.random.default_rng(seed).standard_normal((len(PROMPTS), pipe.latent_channels, h, h)).astype(np.float32)


@pytest.mark.parametrize("variant,name,cls,steps", [
    ("sd1", "ddim", "DDIMScheduler", 3),
    ("sd1", "pndm", "PNDMScheduler", 3),
    ("sd2", "ddim", "DDIMScheduler", 2),  # the folder's own scheduler: DDIM with v-prediction
])
def test_images_match_diffusers(variant, name, cls, steps, ours, theirs):
  pipe = ours[variant].with_scheduler(name)
  latents = initial_latents(pipe)
  images = pipe(PROMPTS, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=7.5, latents=latents)
  reference = diffusers_images(theirs[variant], cls, latents, steps)
  assert images.shape == reference.shape == (2, pipe.default_size, pipe.default_size, 3)
  err = float(np.abs(images - reference).max())
  print(f"{variant}/{cls}: max abs image error {err:.2e}")
  assert err <= TOL, f"{variant}/{cls}: max abs image error {err:.2e}"
  # Another guidance scale reuses the compiled sampler (guidance is an argument, not a constant).
  pipe(PROMPTS, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=3.0, latents=latents)
  assert pipe.last_timings["compile_s"] == 0.0


def test_save_pretrained_round_trip(sd1, ours, theirs, tmp_path):
  pipe = ours["sd1"].with_scheduler("euler")
  out = pipe.save_pretrained(str(tmp_path / "copy"))
  # diffusers reads the folder, with our scheduler choice, and gets the original weights and tokenizer.
  loaded = diffusers.StableDiffusionPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False)
  original = theirs["sd1"]
  assert type(loaded.scheduler).__name__ == "EulerDiscreteScheduler"
  for name in ("unet", "vae", "text_encoder"):
    a, b = getattr(loaded, name).state_dict(), getattr(original, name).state_dict()
    assert a.keys() == b.keys(), name
    for k in a:
      assert torch.equal(a[k], b[k]), f"{name}.{k}"
  tok = lambda p: p.tokenizer(PROMPTS, padding="max_length", max_length=77, return_tensors="pt").input_ids
  assert torch.equal(tok(loaded), tok(original))
  # ... and so do we: the same parameters, tokenizer and scheduler.
  back = diffusion_jax.from_pretrained(out)
  assert back.scheduler.config == pipe.scheduler.config
  np.testing.assert_array_equal(back.tokenize(PROMPTS), pipe.tokenize(PROMPTS))
  leaves_a = jax.tree_util.tree_leaves_with_path(pipe.params)
  leaves_b = dict(jax.tree_util.tree_leaves_with_path(back.params))
  assert len(leaves_a) == len(leaves_b)
  for path, leaf in leaves_a:
    np.testing.assert_array_equal(np.asarray(leaves_b[path]), np.asarray(leaf), err_msg=str(path))


def test_batch_is_split_over_the_devices_that_divide_it(ours):
  pipe = ours["sd1"]
  n = jax.device_count()  # 8 fake CPU devices in tests
  assert pipe._mesh_for(n).devices.size == n
  assert pipe._mesh_for(2 * n).devices.size == n
  assert pipe._mesh_for(2).devices.size == 2  # batch 2 (the parity tests): 2 devices, one image each
  assert pipe._mesh_for(3).devices.size == (3 if n >= 3 else 1)


def test_seeds_give_per_image_noise(ours):
  pipe = ours["sd1"]
  both = pipe.initial_noise([5, 7], 32, 32)
  assert both.shape == (2, 4, 16, 16)
  np.testing.assert_array_equal(both[1], pipe.initial_noise([7], 32, 32)[0])
  assert np.abs(both[0] - both[1]).max() > 0.1


@pytest.mark.parametrize("kwargs,match", [
    (dict(prompt=["a", "b"], seeds=[1, 2, 3]), "3 seeds for 2 images"),
    (dict(prompt="a", latents=np.zeros((1, 4, 8, 8), np.float32)), "expected \\(1, 4, 16, 16\\)"),
    (dict(prompt="a", height=36), "multiples of"),
    (dict(prompt=["a", "b"], negative_prompt=["x"]), "negative_prompt has 1"),
    (dict(prompt="a", seeds=[0], latents=np.zeros((1, 4, 16, 16), np.float32)), "either seeds or latents"),
    (dict(prompt=[]), "non-empty"),
])
def test_bad_arguments_fail_before_compiling(ours, kwargs, match):
  with pytest.raises(ValueError, match=match):
    ours["sd1"](**kwargs, num_inference_steps=2)


@pytest.mark.parametrize("variant", ["sd1", "sd2"])
def test_encode_gives_diffusers_scaled_latents(variant, ours, theirs):
  # Pipeline.encode is the inverse mapping of decode: the posterior mean times scaling_factor, as diffusers'
  # img2img prepares image latents; decoding them gives the VAE's reconstruction.
  pipe, ref = ours[variant], theirs[variant]
  size = pipe.vae.config.sample_size
  images = np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
  ours_z = np.asarray(pipe.encode(pipe.params, images))
  with torch.no_grad():
    nchw = torch.from_numpy(images.transpose(0, 3, 1, 2))
    theirs_z = (ref.vae.encode(nchw).latent_dist.mean * ref.vae.config.scaling_factor).numpy().transpose(0, 2, 3, 1)
    recon = ref.vae.decode(torch.from_numpy(theirs_z.transpose(0, 3, 1, 2)) / ref.vae.config.scaling_factor).sample
  np.testing.assert_allclose(ours_z, theirs_z, atol=1e-4)
  recon = np.clip(recon.numpy().transpose(0, 2, 3, 1) / 2 + 0.5, 0, 1)
  np.testing.assert_allclose(np.asarray(pipe.decode(pipe.params, ours_z)), recon, atol=1e-4)
