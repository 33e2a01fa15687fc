"""Attend-and-Excite parity with diffusers' StableDiffusionAttendAndExcitePipeline (diffusers 0.42,
pipelines/deprecated) on tiny random-weight folders: the same latents and arguments give the same images
(<= 2e-3 max abs), the same per-step losses and maximum attentions, and the same number of refinement
iterations per step and image.

diffusers' per-step numbers are captured by wrapping its `_compute_loss` (called once per evaluation, with
the maximum attention of each subject) and `_perform_iterative_refinement_step` (which also takes the refinement
cap that its __call__ does not expose). The settings make Attend-and-Excite move the latents a lot (scale_factor
1000 on random weights, whose attention is nearly uniform): the images differ clearly from plain sampling, the
two images of a batch stop refining after different numbers of iterations, and a threshold step after
max_iter_to_alter refines without the final update.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need PyTorch")
diffusers = pytest.importorskip("diffusers", reason="parity tests need diffusers")
pytest.importorskip("transformers", reason="the tiny folders need transformers")

import diffusion_jax  # noqa: E402
from diffusion_fixtures import tiny_sd1, tiny_sd2, tiny_sd_reference  # noqa: E402,F401

TOL = 2e-3
LOSS_TOL = 2e-5


def _ae_pipeline_class():
  from diffusers.pipelines.deprecated.stable_diffusion_attend_and_excite import (
      StableDiffusionAttendAndExcitePipeline)
  return StableDiffusionAttendAndExcitePipeline


def diffusers_run(folder, prompts, token_indices, latents, *, max_refinement_steps=20, **kwargs):
  """diffusers' images and, per (step, image) in loop order, a record {initial, final, initial_maxes, maxes,
  iterations}."""
  pipe = _ae_pipeline_class().from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
  pipe.set_progress_bar_config(disable=True)
  events = []
  compute_loss, refine = pipe._compute_loss, pipe._perform_iterative_refinement_step

  def record_loss(max_attention_per_index):
    loss = compute_loss(max_attention_per_index)
    value = lambda x: float(x.detach()) if torch.is_tensor(x) else float(x)  # the loss is the int 0 when met
    events.append(("loss", value(loss), [value(m) for m in max_attention_per_index]))
    return loss

  def record_refinement(*args, **kw):
    events.append(("begin",))
    out = refine(*args, **dict(kw, max_refinement_steps=max_refinement_steps))
    events.append(("end",))
    return out

  pipe._compute_loss = record_loss
  pipe._perform_iterative_refinement_step = record_refinement
  with torch.no_grad():
    images = pipe(prompts, token_indices=token_indices, latents=torch.from_numpy(latents), output_type="np",
                  **kwargs).images
  return images, _parse(events)


def _parse(events):
  records, k = [], 0
  while k < len(events):
    kind, loss, maxes = events[k]
    rec = dict(initial=loss, final=loss, initial_maxes=maxes, maxes=maxes, iterations=0)
    k += 1
    if k < len(events) and events[k][0] == "begin":
      inner = []
      k += 1
      while events[k][0] != "end":
        inner.append(events[k])
        k += 1
      k += 1
      # iterations, then one re-evaluation at the final latents
      rec.update(final=inner[-1][1], maxes=inner[-1][2], iterations=len(inner) - 1)
    records.append(rec)
  return records


def compare(ours, theirs, records, num_timesteps, batch, max_iter_to_alter, thresholds):
  """Images, and per (step, image) the losses, maxima and refinement counts wherever ours ran a gradient pass."""
  images, diag = ours
  err = float(np.abs(images - theirs).max())
  assert err <= TOL, f"images differ from diffusers' by {err}"
  assert len(records) == num_timesteps * batch  # diffusers evaluates at every step
  loss_err = 0.0
  for i in range(num_timesteps):
    ran = i < max_iter_to_alter or i in thresholds
    for b in range(batch):
      rec = records[i * batch + b]
      if not ran:
        assert np.isnan(diag["loss"][b, i]) and diag["refinement_steps"][b, i] == 0
        continue
      where = f"step {i}, image {b}"
      assert diag["refinement_steps"][b, i] == rec["iterations"], where
      np.testing.assert_allclose(diag["initial_loss"][b, i], rec["initial"], atol=LOSS_TOL, err_msg=where)
      np.testing.assert_allclose(diag["loss"][b, i], rec["final"], atol=LOSS_TOL, err_msg=where)
      loss_err = max(loss_err, abs(diag["loss"][b, i] - rec["final"]), abs(diag["initial_loss"][b, i] - rec["initial"]))
      k = len(rec["maxes"])
      for key, want in (("max_attention", rec["maxes"]), ("initial_max_attention", rec["initial_maxes"])):
        np.testing.assert_allclose(diag[key][b, i, :k], want, atol=LOSS_TOL, err_msg=f"{key}, {where}")
        assert np.isnan(diag[key][b, i, k:]).all()
  return err, loss_err


def initial_latents(pipe, batch, seed=0):
  h = pipe.unet.config.sample_size
  return np.random.default_rng(seed).standard_normal((batch, pipe.latent_channels, h, h)).astype(np.float32)


def test_single_prompt_matches_diffusers_reference_config(tiny_sd_reference):
  """diffusers' own Attend-and-Excite test setting (REFERENCE.md section 2): one prompt, thresholds {0: 0.7}
  (20 refinement iterations that never reach it), here with 2 steps so a second, plain-update step follows."""
  pipe = diffusion_jax.from_pretrained(tiny_sd_reference)
  latents = initial_latents(pipe, 1)
  kwargs = dict(num_inference_steps=2, guidance_scale=6.0, max_iter_to_alter=2, thresholds={0: 0.7})
  images = pipe("a cat and a frog", token_indices=[2, 5], latents=latents, **kwargs)
  theirs, records = diffusers_run(tiny_sd_reference, "a cat and a frog", [2, 5], latents, **kwargs)
  err, loss_err = compare((images, pipe.last_attend_excite), theirs, records, 2, 1, 2, {0: 0.7})
  assert pipe.last_attend_excite["refinement_steps"][0, 0] == 20
  print(f"reference config: images max abs {err:.2e}, losses max abs {loss_err:.2e}")


BATCH_PROMPTS = ["a cat and a frog", "a red dog with a bird on a bench"]
BATCH_INDICES = [[2, 5], [3, 6, 9]]


@pytest.mark.parametrize("variant,copies,num_devices", [("sd1", 2, 2), ("sd2", 1, None)])
def test_batch_with_per_prompt_indices_matches_diffusers(variant, copies, num_devices, request):
  """Two prompts with different token indices. sd1: the pair twice, 4 images on 2 devices, so each device runs
  its 2 images' gradient passes one after the other (the default gradient_chunk=1, lax.map;
  tests/test_attend_excite.py checks chunked against whole-batch passes number for number on a toy model)."""
  import jax
  folder = request.getfixturevalue(f"tiny_{variant}")
  pipe = diffusion_jax.from_pretrained(folder, devices=jax.devices()[:num_devices] if num_devices else None)
  prompts, indices = BATCH_PROMPTS * copies, BATCH_INDICES * copies
  batch = len(prompts)
  latents = initial_latents(pipe, batch)
  steps = 3
  n_t = pipe.scheduler.set_timesteps(steps, (1, 1, 1, 4)).num_steps  # PNDM: steps + 1
  thresholds = {0: THRESHOLD[variant], n_t - 1: 0.5}  # the last one after max_iter_to_alter: refine, no update
  kwargs = dict(num_inference_steps=steps, guidance_scale=7.5, max_iter_to_alter=2, thresholds=thresholds,
                scale_factor=1000.0, max_refinement_steps=4)
  images = pipe(prompts, token_indices=indices, latents=latents, **kwargs)
  diag = pipe.last_attend_excite
  theirs, records = diffusers_run(folder, prompts, indices, latents, **kwargs)
  err, loss_err = compare((images, diag), theirs, records, n_t, batch, 2, thresholds)
  # The images stop refining at step 0 after different numbers of iterations: each has its own loop state.
  assert sorted(diag["refinement_steps"][:, 0]) == REFINEMENTS[variant], diag["refinement_steps"]
  # Plain sampling (equal to diffusers' StableDiffusionPipeline: tests/test_pipeline_parity.py) through the same
  # compiled sampler: no updates, no refinement.
  plain = pipe(prompts, token_indices=indices, latents=latents, **dict(kwargs, max_iter_to_alter=0, thresholds={}))
  assert pipe.last_timings["compile_s"] == 0.0 and np.isnan(pipe.last_attend_excite["loss"]).all()
  moved = float(np.abs(images - plain).max())
  assert moved > 10 * TOL, f"Attend-and-Excite barely changed the images ({moved}); the test would prove nothing"
  print(f"{variant}, {batch} images: images max abs {err:.2e}, losses max abs {loss_err:.2e}; A&E vs plain "
        f"{moved:.3f}; refinement iterations [image, step] {diag['refinement_steps'].tolist()}")


# Thresholds at step 0 chosen from diffusers' loss trajectories (losses about 1e-4 (sd1) / 2e-3 (sd2) apart per
# iteration) so that the images stop after different numbers of iterations (sd2: one at the cap of 4).
THRESHOLD = {"sd1": 0.01424, "sd2": 0.024}
REFINEMENTS = {"sd1": [0, 2, 3, 3], "sd2": [3, 4]}


@pytest.mark.parametrize("kwargs,match", [
    (dict(token_indices=[2, 9]), r"token index 9 is on padding.*'a cat and a frog' has tokens .*valid choices"),
    (dict(subjects=["cat", "dog"]), "'dog' is not in the prompt 'a cat and a frog'"),
    (dict(token_indices=[2, 5], thresholds={3: 0.5}), r"thresholds at steps \['3'\].*3 timesteps"),
    (dict(token_indices=[2, 5], attn_res=(8, 8)),
     r"attn_res=\(8, 8\) matches no cross-attention layer.*\[\(16, 16\)\]"),
    (dict(token_indices=[2, 5], latent_update_fn=lambda *a: a[1]), "cannot be combined"),
    (dict(token_indices=[2, 5], attention_steps=[5]), "attention_steps"),
    (dict(token_indices=[2, 5], gradient_chunk=0), "gradient_chunk must be a positive integer"),
])
def test_pipeline_rejects_bad_arguments_before_compiling(tiny_sd_reference, kwargs, match):
  pipe = diffusion_jax.from_pretrained(tiny_sd_reference)
  with pytest.raises(ValueError, match=match):
    pipe("a cat and a frog", num_inference_steps=3, **kwargs)
  assert pipe.get_indices("a cat and a frog")[5] == "frog</w>"
