"""Single-file checkpoints (original CompVis / Stability layout) against diffusers' from_single_file.

The files are tiny random pipelines (diffusers_fixtures.write_tiny_sd) converted to the original layout by the
inverse of diffusers' mapping; diffusers' StableDiffusionPipeline.from_single_file reads them back (offline,
`config=` the folder) to exactly the folder's weights, which checks that converter. Then our from_single_file must
give the same images (2e-3 max abs) and the same parameters as from_pretrained on the folder.
"""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="single-file tests write the checkpoints with PyTorch")
diffusers = pytest.importorskip("diffusers", reason="parity with diffusers' from_single_file")
pytest.importorskip("transformers", reason="the tiny folders need transformers")

import jax  # noqa: E402

import diffusion_jax  # noqa: E402
from diffusion_fixtures import to_original_layout, write_single_file, write_tiny_sd  # noqa: E402
from diffusion_jax import convert  # noqa: E402
from diffusion_jax.single_file import SingleFileError, ema_name  # noqa: E402
from t2i_common.weights import WeightMismatchError  # noqa: E402

PROMPTS = ["a red cat", "a blue dog and a frog!"]
NEGATIVE = ["blurry", "a green bird"]
TOL = 2e-3


# Compile time dominates these tiny models; XLA's optimisations do not change the numerics checked here.
pytestmark = pytest.mark.usefixtures("fast_compile_module")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """{variant: (diffusers folder, original-layout state dict, .safetensors path)} for sd1 (CLIP text encoder)
  and sd2 (OpenCLIP text encoder, one extra residual block, "!" padding)."""
  out = {}
  for variant in ("sd1", "sd2"):
    root = tmp_path_factory.mktemp(variant)
    folder = write_tiny_sd(str(root), variant)
    state = to_original_layout(folder)
    out[variant] = (folder, state, write_single_file(str(root / f"{variant}.safetensors"), state))
  return out


def _diffusers(path=None, folder=None, single=True):
  kwargs = dict(safety_checker=None, requires_safety_checker=False)
  if single:
    pipe = diffusers.StableDiffusionPipeline.from_single_file(path, config=folder, local_files_only=True, **kwargs)
  else:
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, **kwargs)
  pipe.set_progress_bar_config(disable=True)
  return pipe


def _assert_same_params(a, b):
  leaves_a = jax.tree_util.tree_leaves_with_path(a.params)
  leaves_b = dict(jax.tree_util.tree_leaves_with_path(b.params))
  assert len(leaves_a) == len(leaves_b)
  for path, leaf in leaves_a:
    np.testing.assert_array_equal(np.asarray(leaves_b[path]), np.asarray(leaf), err_msg=str(path))


@pytest.mark.parametrize("variant", ["sd1", "sd2"])
def test_images_match_diffusers_from_single_file(variant, files):
  folder, _, path = files[variant]
  theirs = _diffusers(path, folder)
  # The test file is faithful: diffusers reads it back to the folder's weights, tensor for tensor.
  original = _diffusers(folder=folder, single=False)
  for name in ("unet", "vae", "text_encoder"):
    a, b = getattr(theirs, name).state_dict(), getattr(original, name).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
  ours = diffusion_jax.from_single_file(path, config=folder)
  _assert_same_params(ours, diffusion_jax.from_pretrained(folder))
  np.testing.assert_array_equal(ours.tokenize(PROMPTS), theirs.tokenizer(
      PROMPTS, padding="max_length", max_length=77, return_tensors="np").input_ids)
  h = ours.unet.config.sample_size
  latents = np.random.default_rng(0).standard_normal((2, 4, h, h)).astype(np.float32)
  images = ours(PROMPTS, negative_prompt=NEGATIVE, num_inference_steps=3, guidance_scale=7.5, latents=latents)
  with torch.no_grad():
    reference = theirs(PROMPTS, negative_prompt=NEGATIVE, num_inference_steps=3, guidance_scale=7.5,
                       latents=torch.from_numpy(latents), output_type="np").images
  err = float(np.abs(images - reference).max())
  print(f"{variant} single file ({type(ours.scheduler).__name__}): max abs image error {err:.2e}")
  assert err <= TOL, f"{variant}: max abs image error {err:.2e}"


def test_full_ckpt_with_ema(files, tmp_path):
  """A full training checkpoint (.ckpt, {"state_dict": ...}): raw UNet weights in model.diffusion_model.*, the
  EMA copy in model_ema.* under ldm's dot-less names; read with torch.load(weights_only=True)."""
  folder, state, _ = files["sd1"]
  full = {}
  for k, v in state.items():
    if k.startswith("model.diffusion_model."):
      full[ema_name(k)] = v
      full[k] = v + 0.01  # the raw (non-EMA) weights differ
    else:
      full[k] = v
  full.update({"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(1000)})
  path = write_single_file(str(tmp_path / "full.ckpt"), full)
  reference = diffusion_jax.from_pretrained(folder)
  _assert_same_params(diffusion_jax.from_single_file(path, config=folder, use_ema=True), reference)
  raw = diffusion_jax.from_single_file(path, config=folder)  # diffusers' default: the non-EMA weights
  kernel = lambda p: np.asarray(p.params["unet"]["params"]["conv_in"]["kernel"])
  np.testing.assert_allclose(kernel(raw), kernel(reference) + 0.01, atol=1e-6)
  _assert_same_params(diffusion_jax.from_single_file(path, config=folder, use_ema=False).with_scheduler("ddim"), raw)


def test_ema_names_missing_are_listed(files, tmp_path):
  folder, state, _ = files["sd1"]
  out_layer = {ema_name(k): v.clone() for k, v in state.items() if k.startswith("model.diffusion_model.out.")}
  partial = dict(state, **out_layer)  # an EMA copy of the output layer only
  path = write_single_file(str(tmp_path / "partial-ema.safetensors"), partial)
  with pytest.raises(WeightMismatchError, match=r"model_ema.diffusion_modelinput_blocks00weight \(the EMA copy of "
                     r"model.diffusion_model.input_blocks.0.0.weight\)"):
    diffusion_jax.from_single_file(path, config=folder, use_ema=True)


def test_ema_only_file_refuses_use_ema(files):
  folder, _, path = files["sd1"]
  with pytest.raises(SingleFileError, match="has no EMA weights .*use_ema=False"):
    diffusion_jax.from_single_file(path, config=folder, use_ema=True)


def test_strict_lists_missing_unexpected_and_misshaped(files, tmp_path):
  folder, state, _ = files["sd2"]
  bad = dict(state)
  del bad["model.diffusion_model.input_blocks.1.0.in_layers.0.weight"]
  bad["model.diffusion_model.input_blocks.1.7.weight"] = torch.zeros(3)
  bad["something_else.weight"] = torch.zeros(3)
  bad["first_stage_model.decoder.up.0.block.0.conv1.weight"] = torch.zeros(1, 1, 3, 3)
  bad["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(9, 48)
  path = write_single_file(str(tmp_path / "bad.safetensors"), bad)
  with pytest.raises(WeightMismatchError) as info:
    diffusion_jax.from_single_file(path, config=folder)
  message = str(info.value)
  assert "down_blocks_0/resnets_0/norm1/scale" in info.value.missing[0], message
  assert {"model.diffusion_model.input_blocks.1.7.weight", "something_else.weight"} <= set(info.value.unexpected)
  assert any(m.startswith("first_stage_model.decoder.up.0.block.0.conv1.weight: (1, 1, 3, 3)")
             for m in info.value.misshaped), message
  assert any(m.startswith("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight:q: (3, 48) -> (48, 48)")
             for m in info.value.misshaped), message
  assert str(path) in message


def test_presets_and_bad_configs(files, tmp_path):
  _, _, path = files["sd1"]
  tokenizer = os.path.join(files["sd1"][0], "tokenizer")
  # A tiny file against the full-size SD 1.x architecture: every tensor is listed, nothing is loaded.
  with pytest.raises(WeightMismatchError, match="wrong shape"):
    diffusion_jax.from_single_file(path, config="sd1", tokenizer=tokenizer)
  with pytest.raises(SingleFileError, match="an SD 1.x checkpoint; use config='sd1'"):
    diffusion_jax.from_single_file(path, config="sd2-v", tokenizer=tokenizer)
  with pytest.raises(SingleFileError, match="an SD 2.x checkpoint; use config='sd2-base'"):
    diffusion_jax.from_single_file(files["sd2"][2], config="sd1", tokenizer=tokenizer)
  with pytest.raises(ValueError, match="unknown preset 'sd3'.*sd1 .*sd2-base .*sd2-v "):
    diffusion_jax.from_single_file(path, config="sd3")
  with pytest.raises(FileNotFoundError, match="lacks unet/, vae/"):
    diffusion_jax.from_single_file(path, config=str(tmp_path))


def test_sd2_preset_tokenizer_pads_with_exclamation_mark():
  from diffusion_jax.single_file import open_clip_tokenizer
  try:
    tok = open_clip_tokenizer("!")
  except FileNotFoundError as e:
    pytest.skip(str(e))
  ids = tok("a photo of a cat").input_ids[0]
  assert ids[:7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407] and ids[7:].max() == 0


def test_convert_cli_writes_a_diffusers_folder(files, tmp_path, capsys):
  folder, _, path = files["sd2"]
  out = convert.main(["--from-single-file", path, "--config", folder, "--out", str(tmp_path / "out")])
  assert "wrote" in capsys.readouterr().out
  loaded = _diffusers(folder=out, single=False)
  original = _diffusers(folder=folder, single=False)
  for name in ("unet", "vae", "text_encoder"):
    a, b = getattr(loaded, name).state_dict(), getattr(original, name).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
  assert type(loaded.scheduler) is type(original.scheduler)
  assert loaded.tokenizer.pad_token == "!"
  _assert_same_params(diffusion_jax.from_pretrained(out), diffusion_jax.from_pretrained(folder))
  with pytest.raises(SystemExit, match="error: .*is not a Stable Diffusion checkpoint"):
    other = tmp_path / "other.safetensors"
    write_single_file(str(other), {"encoder.weight": torch.zeros(2)})
    convert.main(["--from-single-file", str(other), "--config", folder, "--out", str(tmp_path / "x")])
