"""Parity of our UNet, VAE and CLIP text encoder with diffusers/transformers on tiny random SD folders
(sd1 and sd2 variants of tests/diffusion_fixtures.py), the reverse conversion, and strict loading.

Tolerance: 1e-4 max abs in fp32 (measured errors are ~1e-6 for UNet/text, ~1e-5 for the VAE decoder).
"""
import functools
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests build the PyTorch reference")
diffusers = pytest.importorskip("diffusers", reason="parity tests compare against diffusers")
transformers = pytest.importorskip("transformers", reason="parity tests compare against transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from diffusion_fixtures import FAST_COMPILE, randomize_norms, tiny_sd1, tiny_sd2  # noqa: E402,F401  (fixtures)
from diffusion_jax import convert  # noqa: E402
from diffusion_jax.models import unet_apply_nchw  # noqa: E402
from t2i_common.weights import WeightMismatchError  # noqa: E402

TOL = 1e-4
jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)


@pytest.fixture(params=["sd1", "sd2"])
def folder(request):
  return request.getfixturevalue(f"tiny_{request.param}")


def _max_err(ours, ref) -> float:
  ours, ref = np.asarray(ours), np.asarray(ref)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.abs(ours - ref).max())


def test_unet_matches_diffusers(folder):
  _check_unet(os.path.join(folder, "unet"), os.path.basename(folder))


@pytest.mark.parametrize("time_scale_shift", ["default", "scale_shift"])
def test_unet_with_pooled_text_embedding_matches_diffusers(tmp_path, time_scale_shift):
  """addition_embed_type="text" (attention-pooled caption added to the timestep embedding), with the time
  embedding added to or scaling and shifting the resnet features (the shapes LDM uses both options):
  diffusers -> ours matches, and ours -> diffusers reads every tensor back bit-exactly."""
  torch.manual_seed(0)
  ref = diffusers.UNet2DConditionModel(
      sample_size=8, block_out_channels=(32, 32), layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
      down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
      attention_head_dim=4, addition_embed_type="text", addition_embed_type_num_heads=4,
      resnet_time_scale_shift=time_scale_shift).eval()
  randomize_norms(ref, seed=0)
  ref.save_pretrained(str(tmp_path / "unet"))
  module, variables = _check_unet(str(tmp_path / "unet"), f"pooled-text {time_scale_shift}")
  assert module.config.addition_embed_type == "text" and module.config.addition_embed_type_num_heads == 4
  assert module.config.resnet_time_scale_shift == time_scale_shift
  convert.save_unet(str(tmp_path / "ours"), module, variables)
  reloaded = diffusers.UNet2DConditionModel.from_pretrained(str(tmp_path / "ours")).state_dict()
  _assert_same_state(reloaded, ref.state_dict())


def _check_unet(unet_folder: str, label: str):
  """Our UNet loaded from a diffusers unet/ folder predicts what diffusers does (returns module, variables)."""
  ref_model = diffusers.UNet2DConditionModel.from_pretrained(unet_folder).eval()
  module, variables = convert.load_unet(unet_folder)
  cfg = module.config
  rng = np.random.default_rng(0)
  s = cfg.sample_size
  x = rng.standard_normal((2, cfg.in_channels, s, s)).astype(np.float32)
  ctx = rng.standard_normal((2, 9, cfg.cross_attention_dim)).astype(np.float32)
  t = np.array([3, 917])
  with torch.no_grad():
    ref = ref_model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample.numpy()
  fn = jit(lambda v, a, b, c: unet_apply_nchw(module, v, a, b, c))
  err = _max_err(fn(variables, x, t, ctx), ref)
  print(f"UNet {label} max abs error {err:.2e}")
  assert err <= TOL
  assert np.abs(ref).max() > 0.1  # a zero output would make the comparison vacuous
  return module, variables


def test_vae_matches_diffusers(folder):
  ref_model = diffusers.AutoencoderKL.from_pretrained(os.path.join(folder, "vae")).eval()
  module, variables = convert.load_vae(os.path.join(folder, "vae"))
  assert module.config.scaling_factor == pytest.approx(ref_model.config.scaling_factor)
  img = np.random.default_rng(1).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    post = ref_model.encode(torch.from_numpy(img)).latent_dist
    dec = ref_model.decode(post.mean).sample.numpy()

  @jit
  def run(v, images):
    dist = module.apply(v, images, method=module.encode)
    return dist.mean, dist.logvar, module.apply(v, dist.mean, method=module.decode)

  mean, logvar, out = run(variables, jnp.asarray(img.transpose(0, 2, 3, 1)))
  nchw = lambda a: np.asarray(a).transpose(0, 3, 1, 2)
  errs = [_max_err(nchw(mean), post.mean.numpy()), _max_err(nchw(logvar), post.logvar.numpy()),
          _max_err(nchw(out), dec)]
  print(f"VAE {os.path.basename(folder)} max abs errors mean/logvar/decode {errs}")
  assert max(errs) <= TOL


def test_text_encoder_matches_transformers(folder):
  ref_model = transformers.CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder")).eval()
  module, variables = convert.load_text_encoder(os.path.join(folder, "text_encoder"))
  cfg = module.config
  rng = np.random.default_rng(2)
  ids = rng.integers(0, cfg.vocab_size - 2, (3, 77))
  ids[:, 0] = cfg.bos_token_id
  ids[0, 6:] = cfg.eos_token_id  # SD 1.x-style padding with eos
  ids[1, 11] = cfg.eos_token_id  # SD 2.x-style: eos then "!" (id 0)
  ids[1, 12:] = 0
  ids[2, -1] = cfg.eos_token_id
  mask = (np.arange(77)[None] <= np.array([[6], [11], [76]])).astype(np.int64)
  with torch.no_grad():
    ref = ref_model(torch.from_numpy(ids), output_hidden_states=True)
    ref_masked = ref_model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))

  @jit
  def run(v, ids, mask):
    full = module.apply(v, ids, output_hidden_states=True)
    return full, module.apply(v, ids, mask)["last_hidden_state"], module.apply(v, ids, clip_skip=1)

  out, masked, skipped = run(variables, jnp.asarray(ids), jnp.asarray(mask))
  final_ln = ref_model.text_model.final_layer_norm if hasattr(ref_model, "text_model") else ref_model.final_layer_norm
  with torch.no_grad():
    ref_skip = final_ln(ref.hidden_states[-2]).numpy()  # diffusers' clip_skip=1
  errs = {"last": _max_err(out["last_hidden_state"], ref.last_hidden_state.numpy()),
          "pooled": _max_err(out["pooler_output"], ref.pooler_output.numpy()),
          "hidden[-2]": _max_err(out["hidden_states"][-2], ref.hidden_states[-2].numpy()),
          "masked": _max_err(masked, ref_masked.last_hidden_state.numpy()),
          "clip_skip": _max_err(skipped["last_hidden_state"], ref_skip)}
  assert len(out["hidden_states"]) == len(ref.hidden_states)
  print(f"text encoder {os.path.basename(folder)} max abs errors {errs}")
  assert max(errs.values()) <= TOL


def test_text_encoder_without_layers_matches_transformers(tmp_path):
  """A 0-layer encoder (token + position embeddings and the final norm: every word's vector is its own, the
  neglect study's third model) loads and matches transformers; clip_skip has nothing to skip."""
  config = transformers.CLIPTextConfig(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=0,
                                       num_attention_heads=4, max_position_embeddings=16, eos_token_id=2)
  torch.manual_seed(0)
  ref_model = transformers.CLIPTextModel(config).eval()
  ref_model.save_pretrained(tmp_path / "text_encoder")
  module, variables = convert.load_text_encoder(str(tmp_path / "text_encoder"))
  ids = np.random.default_rng(0).integers(3, 99, (2, 16))
  ids[:, 0], ids[0, 9], ids[1, 15] = 0, 2, 2
  with torch.no_grad():
    ref = ref_model(torch.from_numpy(ids))
  out = module.apply(variables, jnp.asarray(ids))
  errs = [_max_err(out["last_hidden_state"], ref.last_hidden_state.numpy()),
          _max_err(out["pooler_output"], ref.pooler_output.numpy())]
  assert max(errs) <= TOL, errs
  with pytest.raises(ValueError, match=r"clip_skip=1 must be in \[0, 1\)"):
    module.apply(variables, jnp.asarray(ids), clip_skip=1)


def _assert_same_state(ours: dict, ref: dict):
  assert sorted(ours) == sorted(ref), set(ours) ^ set(ref)
  for k, v in ref.items():
    np.testing.assert_array_equal(ours[k].detach().numpy(), v.detach().numpy(), err_msg=k)


def test_saved_weights_load_back_into_diffusers(folder, tmp_path):
  """Ours -> diffusers/transformers folders: the libraries read every tensor back bit-exactly."""
  saved = {}
  for name, load, save in (("unet", convert.load_unet, convert.save_unet),
                           ("vae", convert.load_vae, convert.save_vae),
                           ("text_encoder", convert.load_text_encoder, convert.save_text_encoder)):
    module, variables = load(os.path.join(folder, name))
    save(str(tmp_path / name), module, variables)
    saved[name] = module, variables
  for name, cls in (("unet", diffusers.UNet2DConditionModel), ("vae", diffusers.AutoencoderKL),
                    ("text_encoder", transformers.CLIPTextModel)):
    original = cls.from_pretrained(os.path.join(folder, name)).state_dict()
    reloaded = cls.from_pretrained(str(tmp_path / name)).state_dict()
    _assert_same_state(reloaded, original)
  # and our loaders read our own folders back to the same arrays
  module, variables = convert.load_unet(str(tmp_path / "unet"))
  assert module.config == saved["unet"][0].config
  jax.tree.map(np.testing.assert_array_equal, variables, saved["unet"][1])


@pytest.fixture(scope="module")
def sd1_unet(tiny_sd1):
  module, _ = convert.load_unet(os.path.join(tiny_sd1, "unet"))
  return convert.read_folder_state_dict(os.path.join(tiny_sd1, "unet"), convert.DIFFUSERS_STEMS), module


@pytest.mark.parametrize("defect", ["missing", "unexpected", "misshaped"])
def test_strict_unet_loading_names_the_bad_tensor(sd1_unet, defect):
  state, module = dict(sd1_unet[0]), sd1_unet[1]
  name = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
  if defect == "missing":
    del state[name]
  elif defect == "unexpected":
    name = "up_blocks.1.attentions.0.extra_proj.weight"
    state[name] = np.zeros((4, 4), np.float32)
  else:
    state[name] = np.zeros((3, 5), np.float32)
  with pytest.raises(WeightMismatchError) as info:
    convert.unet_from_state_dict(state, module)
  problems = {"missing": info.value.missing, "unexpected": info.value.unexpected,
              "misshaped": info.value.misshaped}
  assert len(problems[defect]) == 1 and sum(map(len, problems.values())) == 1, problems
  assert (name if defect != "missing" else "up_blocks_1/attentions_0/transformer_blocks_0/attn2/to_k/kernel") \
      in str(info.value)


def test_legacy_layouts_load(tiny_sd1, tmp_path):
  """Old checkpoints: VAE attention as query/key/value/proj_attn 1x1 convs, CLIP with a text_model. prefix
  and a position_ids buffer, a sharded safetensors index; all give the same params."""
  from safetensors.numpy import save_file
  _, vae_vars = convert.load_vae(os.path.join(tiny_sd1, "vae"))
  state = convert.read_folder_state_dict(os.path.join(tiny_sd1, "vae"), convert.DIFFUSERS_STEMS)
  legacy = {}
  for k, v in state.items():
    for new, old in ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn.")):
      if "mid_block.attentions" in k and new in k:
        k = k.replace(new, old)
        v = v[:, :, None, None] if v.ndim == 2 else v
    legacy[k] = v
  module, _ = convert.load_vae(os.path.join(tiny_sd1, "vae"))
  jax.tree.map(np.testing.assert_array_equal, convert.vae_from_state_dict(legacy, module), vae_vars)

  text_dir = tmp_path / "text_encoder"
  text_dir.mkdir()
  text_module, text_vars = convert.load_text_encoder(os.path.join(tiny_sd1, "text_encoder"))
  tstate = convert.text_encoder_state_dict(text_vars, text_module.config)
  tstate["text_model.embeddings.position_ids"] = np.arange(77, dtype=np.int64)[None]
  names = sorted(tstate)
  shards = {"model-00001-of-00002.safetensors": names[:10], "model-00002-of-00002.safetensors": names[10:]}
  for fname, keys in shards.items():
    save_file({k: tstate[k] for k in keys}, str(text_dir / fname), metadata={"format": "pt"})
  with open(text_dir / "model.safetensors.index.json", "w") as f:
    import json
    json.dump({"weight_map": {k: fname for fname, keys in shards.items() for k in keys}}, f)
  os.link(os.path.join(tiny_sd1, "text_encoder", "config.json"), text_dir / "config.json")
  _, reloaded = convert.load_text_encoder(str(text_dir))
  jax.tree.map(np.testing.assert_array_equal, reloaded, text_vars)
