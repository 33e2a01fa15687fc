"""Attend-and-Excite pieces without a real model: the reference smoothing kernel, the loss on hand-made maps,
the batched refinement against a per-image re-expression of diffusers' loop (a toy "UNet" whose attention we
control), steps without a gradient pass, the non-finite-gradient skip, and the argument checks."""
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.attend_excite import indices as ae_indices
from diffusion_jax.attend_excite.loss import (gaussian_kernel, max_attention_per_token, smooth, subject_loss,
                                              token_attention)
from diffusion_jax.attend_excite.update import (AttendExciteInputs, AttendExciteSettings, init_diagnostics,
                                                make_latent_update)
from diffusion_jax.models.attention import CAPTURE_NAME
from t2i_common.parallel import CPU_FAST_COMPILE


# ---- smoothing and loss ----------------------------------------------------------------------------------
def test_kernel_is_the_references():
  k = gaussian_kernel(3, 0.5)
  np.testing.assert_allclose(k[1], np.array([0.122103, 0.331911, 0.122103]), atol=1e-6)
  np.testing.assert_allclose(k[0], np.array([0.044919, 0.122103, 0.044919]), atol=1e-6)
  np.testing.assert_allclose(k.sum(0) / k.sum(0).sum(), [0.211942, 0.576117, 0.211942], atol=1e-6)
  for bad in (dict(kernel_size=2), dict(kernel_size=0), dict(sigma=0.0)):
    with pytest.raises(ValueError):
      gaussian_kernel(**{"kernel_size": 3, "sigma": 0.5, **bad})


def test_smoothing_reflect_pads_and_keeps_the_size():
  x = np.random.default_rng(0).random((2, 5, 6, 3)).astype(np.float32)
  k = gaussian_kernel(3, 0.5)
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  ref = sum(k[i, j] * padded[:, i:i + 5, j:j + 6] for i in range(3) for j in range(3))
  np.testing.assert_allclose(np.asarray(smooth(jnp.asarray(x))), ref, atol=1e-6)


def test_max_attention_and_loss_on_hand_made_maps():
  # 4 x 4 map, 77 tokens: token 2 has one bright pixel, token 5 is flat.
  maps = np.zeros((1, 16, 77), np.float32)
  maps[0, 5, 2] = 0.1  # 100 x 0.1 = 10 before the softmax over tokens 1 .. 75
  probs = np.asarray(token_attention(jnp.asarray(maps), jnp.array([76])))
  assert probs[0, :, 0].max() == 0 and probs[0, :, 76].max() == 0  # <|startoftext|> and position 76 dropped
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
  bright = np.exp(10) / (np.exp(10) + 74)
  np.testing.assert_allclose(probs[0, 5, 2], bright, rtol=1e-5)
  np.testing.assert_allclose(probs[0, 0, 5], 1 / 75, rtol=1e-5)
  maxes = np.asarray(max_attention_per_token(jnp.asarray(maps), jnp.array([[2, 5]]), jnp.array([76]), (4, 4)))
  # pixel (1, 1) is interior: the smoothed max is the centre weight on the bright pixel plus the rest on 1/75
  centre = gaussian_kernel()[1, 1]
  np.testing.assert_allclose(maxes[0, 0], centre * bright + (1 - centre) * (1 / 75), rtol=1e-5)
  np.testing.assert_allclose(maxes[0, 1], 1 / 75, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(subject_loss(jnp.asarray(maxes))), [1 - 1 / 75], rtol=1e-6)
  # unsmoothed: the raw maximum; sd_2_1-style last (here 4) renormalises over tokens 1 .. 3 only
  raw = max_attention_per_token(jnp.asarray(maps), jnp.array([[2]]), jnp.array([76]), (4, 4),
                                smooth_attentions=False)
  np.testing.assert_allclose(np.asarray(raw)[0, 0], bright, rtol=1e-5)
  short = np.asarray(token_attention(jnp.asarray(maps), jnp.array([4])))
  np.testing.assert_allclose(short[0, 0, 1:4], 1 / 3, rtol=1e-5)
  assert short[0, :, 4:].max() == 0


def test_loss_is_zero_when_every_subject_is_attended_and_ignores_padding():
  maxes = jnp.array([[1.0, 1.2], [0.3, 0.9], [0.4, 0.0]])
  mask = jnp.array([[True, True], [True, True], [True, False]])
  np.testing.assert_allclose(np.asarray(subject_loss(maxes, mask)), [0.0, 0.7, 0.6], atol=1e-6)
  assert float(subject_loss(maxes, mask)[0]) == 0.0


# ---- the update against a per-image re-expression of diffusers' loop, on a toy model --------------------
class ToyUNet(nn.Module):
  """Sows cross-attention "probabilities" over 6 tokens on a 4 x 4 map: token 2's logit is w * latent, so
  its attention grows with the latent (sqrt(|latent|) when `sqrt`, whose gradient is infinite at 0). Every
  call is counted on the host, so steps without a gradient pass can be seen."""
  remat: bool = False
  late_conv_kernels: bool = False  # (no convolutions here)
  sqrt: bool = False

  @nn.compact
  def __call__(self, sample, t, context, capture_cross_attn_at=()):
    w = self.param("w", nn.initializers.ones, ())
    z = sample[..., 0].reshape(sample.shape[0], -1)  # [B, 16]
    z = jnp.sqrt(jnp.abs(z)) if self.sqrt else z
    logits = jnp.zeros(z.shape + (6,)).at[..., 2].set(w * z)
    jax.debug.callback(_count)
    if capture_cross_attn_at:
      self.sow("intermediates", CAPTURE_NAME, jax.nn.softmax(logits, -1)[:, None])  # [B, heads=1, 16, 6]
    return sample


CALLS = []


def _count():
  CALLS.append(1)


@functools.lru_cache(maxsize=None)
def _loss_and_grad(model, indices: tuple, last: int):
  from diffusion_jax.models import mean_cross_attention

  def loss_fn(z, params):
    _, state = model.apply(params, z, 0, None, capture_cross_attn_at=((4, 4),), mutable=["intermediates"])
    m = max_attention_per_token(mean_cross_attention(state["intermediates"]), jnp.asarray([indices]),
                                jnp.asarray([last]), (4, 4))
    return subject_loss(m)[0]
  return jax.jit(jax.value_and_grad(loss_fn))


def reference_step(model, params, latents, i, t, indices, last, thresholds, max_iter, step_size, max_refine):
  """diffusers' per-step Attend-and-Excite for one image, in its own control flow (Python loop, one jitted
  loss-and-gradient per evaluation)."""
  value_and_grad = _loss_and_grad(model, tuple(indices), last)
  loss_fn = lambda z: value_and_grad(z, params)
  loss, grad = loss_fn(latents)
  iterations = 0
  if i in thresholds and loss > 1.0 - thresholds[i]:
    target = max(0.0, 1.0 - thresholds[i])
    while loss > target:
      iterations += 1
      loss, grad = loss_fn(latents)
      if loss != 0:
        latents = latents - step_size * grad
      if iterations >= max_refine:
        break
    loss, grad = loss_fn(latents)
  if i < max_iter and loss != 0:
    latents = latents - step_size * grad
  return latents, float(loss), iterations


def _run_update(model, inputs, settings, latents, steps, shards=1):
  params = {"unet": model.init(jax.random.key(0), latents, 0, None)}
  update = make_latent_update(model, settings, inputs, shards=shards)
  fn = jax.jit(update, compiler_options=CPU_FAST_COMPILE)
  diag = init_diagnostics(steps, latents.shape, inputs.indices.shape[1], settings)
  out = []
  for i in range(steps):
    latents, diag = fn(params, latents, jnp.int32(i), jnp.int32(999 - i), None, diag)
    out.append(latents)
  return params, out, jax.device_get(diag)


def test_batched_refinement_matches_per_image_loop_and_stops_each_image_on_its_own():
  model = ToyUNet()
  rng = np.random.default_rng(0)
  latents = jnp.asarray(rng.normal(size=(2, 4, 4, 1)) * 0.1 + np.array([0.0, 1.5])[:, None, None, None], jnp.float32)
  thresholds, max_iter, steps = {0: 0.35, 2: 0.9}, 2, 4
  indices, mask = ae_indices.padded_indices([[2], [2, 3]])
  inputs = AttendExciteInputs.build(indices, mask, [5, 5], steps, thresholds=thresholds, max_iter_to_alter=max_iter,
                                    scale_factor=3.0, scale_range=(1.0, 0.5))
  settings = AttendExciteSettings(attn_res=(4, 4), max_refinement_steps=6, remat=False)
  CALLS.clear()
  params, per_step, diag = _run_update(model, inputs, settings, latents, steps)
  ref_latents = [latents[b:b + 1] for b in range(2)]
  for i in range(steps):
    for b, idx in enumerate([[2], [2, 3]]):
      ref_latents[b], loss, iters = reference_step(model, params["unet"], ref_latents[b], i, 0, idx, 5, thresholds,
                                                   max_iter, float(inputs.step_size[i]), 6)
      if i < max_iter or i in thresholds:
        np.testing.assert_allclose(diag["loss"][i, b], loss, rtol=1e-5)
        assert diag["refinement_steps"][i, b] == iters, (i, b)
      else:
        assert np.isnan(diag["loss"][i, b])
      np.testing.assert_allclose(np.asarray(per_step[i][b]), np.asarray(ref_latents[b][0]), rtol=1e-5, atol=1e-6)
  counts = diag["refinement_steps"]
  assert counts[0, 0] != counts[0, 1] and counts[0].max() > 1  # the images stop at different iterations
  assert (diag["skipped_updates"] == 0).all()
  np.testing.assert_array_equal(np.isnan(diag["max_attention"][:, 0, 1]), True)  # image 0 has one subject


def test_steps_without_gradient_pass_run_no_model_and_threshold_steps_still_refine():
  model = ToyUNet()
  latents = jnp.zeros((1, 4, 4, 1)) - 0.05  # token 2 slightly below the others: loss about 0.9
  steps = 5
  indices, mask = ae_indices.padded_indices([[2]])
  # max_iter_to_alter 1: steps 1, 2, 4 have no pass at all; step 3 is a threshold step after it.
  inputs = AttendExciteInputs.build(indices, mask, [5], steps, thresholds={3: 0.99}, max_iter_to_alter=1,
                                    scale_factor=1.0, scale_range=(1.0, 1.0))
  settings = AttendExciteSettings(attn_res=(4, 4), max_refinement_steps=2, remat=False)
  CALLS.clear()
  _, per_step, diag = _run_update(model, inputs, settings, latents, steps)
  n_init = 1  # model.init runs the model once
  # step 0: one pass (+ the update); step 3: entry pass, refinement to the cap of 2 (one pass each), no final update
  assert diag["refinement_steps"][:, 0].tolist() == [0, 0, 0, 2, 0]
  assert len(CALLS) - n_init == 1 + (1 + 2)
  assert np.isnan(diag["loss"][[1, 2, 4], 0]).all() and np.isfinite(diag["loss"][[0, 3], 0]).all()
  assert float(jnp.abs(per_step[1] - per_step[0]).max()) == 0.0  # no update at step 1 or 2
  assert float(jnp.abs(per_step[3] - per_step[2]).max()) > 0  # the refinement moved the latents


def test_non_finite_gradient_skips_that_image_and_is_counted():
  model = ToyUNet(sqrt=True)
  latents = jnp.stack([jnp.full((4, 4, 1), 0.3), jnp.zeros((4, 4, 1))])  # image 1: d sqrt|z| / dz = inf at 0
  indices, mask = ae_indices.padded_indices([[2], [2]])
  inputs = AttendExciteInputs.build(indices, mask, [5, 5], 1, thresholds={}, max_iter_to_alter=1, scale_factor=1.0,
                                    scale_range=(1.0, 1.0))
  settings = AttendExciteSettings(attn_res=(4, 4), remat=False)
  _, per_step, diag = _run_update(model, inputs, settings, latents, 1)
  assert diag["skipped_updates"][0].tolist() == [0, 1]
  assert np.isfinite(np.asarray(per_step[0])).all()
  assert float(jnp.abs(per_step[0][1]).max()) == 0.0 and float(jnp.abs(per_step[0][0] - 0.3).max()) > 0


# ---- the gradient pass's memory: chunks of images, late convolution kernels -------------------------------
def test_chunked_gradient_passes_give_the_numbers_of_one_pass_over_the_batch():
  """gradient_chunk splits the batch's gradient pass into a sequence of passes (per shard of the batch); every
  number the update produces is the same, refinement with its per-image stopping included."""
  model = ToyUNet()
  rng = np.random.default_rng(1)
  offsets = np.array([0.0, 1.5, 0.3, 0.9, -0.2, 1.1])[:, None, None, None]
  latents = jnp.asarray(rng.normal(size=(6, 4, 4, 1)) * 0.1 + offsets, jnp.float32)
  steps = 3
  indices, mask = ae_indices.padded_indices([[2], [2, 3], [2], [3], [2, 3], [2]])
  inputs = AttendExciteInputs.build(indices, mask, [5] * 6, steps, thresholds={0: 0.35, 2: 0.9},
                                    max_iter_to_alter=2, scale_factor=3.0, scale_range=(1.0, 0.5))
  runs = {}
  for chunk, shards in ((None, 1), (1, 1), (4, 1), (1, 3)):  # (4, 1): chunks of 3, the divisor of 6 <= 4
    settings = AttendExciteSettings(attn_res=(4, 4), max_refinement_steps=6, gradient_chunk=chunk)
    runs[chunk, shards] = _run_update(model, inputs, settings, latents, steps, shards)[1:]
  whole_latents, whole_diag = runs[None, 1]
  assert len(set(whole_diag["refinement_steps"][0].tolist())) > 1  # the images stop at different iterations
  for key, (per_step, diag) in runs.items():
    for i in range(steps):
      np.testing.assert_allclose(np.asarray(per_step[i]), np.asarray(whole_latents[i]), rtol=1e-6, atol=1e-7,
                                 err_msg=str(key))
    for name, value in diag.items():
      np.testing.assert_allclose(value, whole_diag[name], rtol=1e-6, atol=1e-7, err_msg=f"{key} {name}")
  with pytest.raises(ValueError, match="6 images cannot be split into 4 equal shards"):
    _run_update(model, inputs, AttendExciteSettings(attn_res=(4, 4)), latents, 1, shards=4)


def test_late_kernel_convolution_gradients_equal_lax_and_keep_one_kernel_copy():
  from jax import lax
  from diffusion_jax.models.resnet import late_kernel_conv
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 7, 6, 5)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, 5, 4)), jnp.float32)
  kw = dict(padding=((1, 1), (0, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))  # stride 2, asymmetric pad
  ref = lambda x, k: jnp.sum(jnp.sin(lax.conv_general_dilated(x, k, (2, 2), **kw)))
  late = lambda x, k: jnp.sum(jnp.sin(late_kernel_conv(x, k, (2, 2), **kw)))
  assert float(late(x, k)) == float(ref(x, k))
  for argnums in (0, 1, (0, 1)):  # input gradient alone, and the weight gradient (training) too
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
                 jax.grad(late, argnums)(x, k), jax.grad(ref, argnums)(x, k))
  # A NaN cotangent in image 0 leaves image 1's input gradient finite (the kernel's zero offset is 0 for NaN).
  _, vjp = jax.vjp(lambda x: late_kernel_conv(x, k, (2, 2), **kw), x)
  cot = jnp.ones((2, 4, 3, 4)).at[0, 0, 0, 0].set(jnp.nan)
  assert np.isfinite(np.asarray(vjp(cot)[0][1])).all()

  # Memory: the input gradient through a chain of 8 convolutions (1 MiB kernels, tiny activations). XLA:CPU
  # materialises each flipped kernel; with lax all 8 are built first and kept, here one lives at a time.
  def chain(conv_fn):
    def f(x, ks):
      for kernel in ks:
        x = jnp.tanh(conv_fn(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")))
      return x.sum()
    shapes = (jax.ShapeDtypeStruct((1, 4, 4, 160), jnp.float32), [jax.ShapeDtypeStruct((3, 3, 160, 160),
                                                                                         jnp.float32)] * 8)
    return jax.jit(jax.grad(f)).lower(*shapes).compile().memory_analysis().temp_size_in_bytes
  if jax.default_backend() == "cpu":
    plain, late_temp = chain(lax.conv_general_dilated), chain(late_kernel_conv)
    assert late_temp < plain / 3, (late_temp, plain)


# ---- argument checks ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
  pytest.importorskip("transformers", reason="the tiny tokenizer files are written with transformers")
  import tempfile
  from diffusion_fixtures import write_tiny_tokenizer
  from diffusion_jax.tokenizer import CLIPTokenizer
  folder = write_tiny_tokenizer(tempfile.mkdtemp())
  return CLIPTokenizer.from_folder(folder)


def test_get_indices_and_subjects(tokenizer):
  assert ae_indices.get_indices(tokenizer, "a cat and a frog") == {
      0: "<|startoftext|>", 1: "a</w>", 2: "cat</w>", 3: "and</w>", 4: "a</w>", 5: "frog</w>", 6: "<|endoftext|>"}
  assert ae_indices.subject_indices(tokenizer, "a Cat and a frog.", ["cat", "frog"]) == [2, 5]
  assert ae_indices.subject_indices(tokenizer, "a cat and a cat", ["cat", "cat"]) == [2, 5]  # k-th mention
  # a word outside the tiny vocabulary splits into several tokens: its last one represents it
  table = ae_indices.get_indices(tokenizer, "a zebrafish")
  assert len(table) > 4
  assert ae_indices.subject_indices(tokenizer, "a zebrafish", ["zebrafish"]) == [len(table) - 2]


@pytest.mark.parametrize("kwargs,match", [
    (dict(token_indices=[0, 2]), "token index 0 is <|startoftext|>"),
    (dict(token_indices=[2, 90]), "out of range"),
    (dict(token_indices=[2, 6]), "<|endoftext|>"),
    (dict(token_indices=[2, 9]), "on padding"),
    (dict(token_indices=[2, 2]), "repeat"),
    (dict(subjects=["cat", "dog"]), "'dog' is not in the prompt"),
    (dict(subjects=["cat", "cat"]), "occurs 1 time"),
    (dict(token_indices=[[2], [5], [3]]), "3 lists for 1 prompts"),
    (dict(token_indices=[2], subjects=["cat"]), "either"),
    (dict(token_indices=["cat"]), "list of ints"),
])
def test_bad_indices_name_the_prompt_tokens_and_choices(tokenizer, kwargs, match):
  with pytest.raises(ValueError, match=re.escape(match)) as info:
    ae_indices.normalize_token_indices(tokenizer, ["a cat and a frog"], **kwargs)
  if "token_indices" in kwargs and "subjects" not in kwargs and "lists" not in match and "ints" not in match:
    assert "a cat and a frog" in str(info.value) and "'frog</w>'" in str(info.value)
    assert "valid choices are 1 .. 5" in str(info.value) or "repeat" in match


def test_bad_thresholds_and_attn_res():
  with pytest.raises(ValueError, match=r"thresholds at steps \['51'\].*51 timesteps.*0 \.\. 50"):
    ae_indices.check_thresholds({0: 0.05, 51: 0.8}, 51, 50)
  assert ae_indices.check_thresholds({50: 0.8}, 51, 50) == {50: 0.8}  # PNDM: N + 1 loop indices

  class Cfg:
    block_out_channels = (320, 640, 1280, 1280)
    down_block_types = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    up_block_types = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
  assert ae_indices.cross_attention_resolutions(Cfg, 64, 64) == [(64, 64), (32, 32), (16, 16), (8, 8)]
  assert ae_indices.check_attn_res((16, 16), Cfg, 64, 64, 512, 512) == (16, 16)
  assert ae_indices.check_attn_res(None, Cfg, 64, 64, 512, 512) == (16, 16)
  with pytest.raises(ValueError, match=r"attn_res=\(12, 12\) matches no cross-attention layer.*\(64, 64\), "
                                       r"\(32, 32\), \(16, 16\), \(8, 8\)"):
    ae_indices.check_attn_res((12, 12), Cfg, 64, 64, 512, 512)
