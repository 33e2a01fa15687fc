"""Parity of our CLIP towers (models/clip_model.py, clip_vision.py, clip_text.py) with transformers' CLIPModel on
a tiny random config written with CLIPModel.save_pretrained, strict loading, config defaults, and the CLIP image
preprocessing against transformers' CLIPImageProcessor (PIL backend, the one OpenAI's preprocess matches).

Tolerance: relative max error (max |ours - ref| / max |ref|) <= 1e-4 in fp32 for text features, image features and
logits; preprocessing <= 1e-5 max abs (the same PIL resize, float32 arithmetic).
"""
import functools
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests build the PyTorch reference")
transformers = pytest.importorskip("transformers", reason="parity tests compare against transformers")

import jax  # noqa: E402

from clip_fixtures import write_tiny_clip  # noqa: E402
from diffusion_fixtures import FAST_COMPILE, tiny_clip_bpe  # noqa: E402
from diffusion_jax.clip_score import preprocess_images  # noqa: E402
from diffusion_jax.models.clip_model import CLIPModel, clip_config, load_clip  # noqa: E402
from t2i_common.weights import WeightMismatchError  # noqa: E402

TOL = 1e-4
jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)
VOCAB, _ = tiny_clip_bpe()
BOS, EOS = VOCAB["<|startoftext|>"], VOCAB["<|endoftext|>"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
  return write_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", tokenizer=False)


def _rel_err(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


def _inputs(rng, batch=3, length=12):
  ids = np.full((batch, length), EOS, np.int32)
  mask = np.zeros((batch, length), np.int32)
  for i, n in enumerate([5, 9, 12][:batch]):  # different prompt lengths, padded after the end token
    ids[i, 0], ids[i, 1:n - 1], ids[i, n - 1] = BOS, rng.integers(0, BOS, n - 2), EOS
    mask[i, :n] = 1
  pixels = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
  return ids, mask, pixels


def test_clip_model_matches_transformers(tiny_clip):
  ref = transformers.CLIPModel.from_pretrained(tiny_clip).eval()
  model, variables = load_clip(tiny_clip)
  ids, mask, pixels = _inputs(np.random.default_rng(0))
  with torch.no_grad():
    t_ids, t_mask, t_px = torch.from_numpy(ids).long(), torch.from_numpy(mask).long(), torch.from_numpy(pixels)
    ref_text = ref.get_text_features(input_ids=t_ids, attention_mask=t_mask).pooler_output.numpy()
    ref_text_nomask = ref.get_text_features(input_ids=t_ids).pooler_output.numpy()
    ref_image = ref.get_image_features(pixel_values=t_px).pooler_output.numpy()
    ref_out = ref(input_ids=t_ids, attention_mask=t_mask, pixel_values=t_px)
  nhwc = np.transpose(pixels, (0, 2, 3, 1))
  text = jit(lambda v, i, m: model.apply(v, i, m, method=CLIPModel.get_text_features))(variables, ids, mask)
  text_nomask = jit(lambda v, i: model.apply(v, i, method=CLIPModel.get_text_features))(variables, ids)
  image = jit(lambda v, p: model.apply(v, p, method=CLIPModel.get_image_features))(variables, nhwc)
  out = jit(lambda v, i, p, m: model.apply(v, i, p, m))(variables, ids, nhwc, mask)
  errs = {"text_features": _rel_err(text, ref_text), "text_features_no_mask": _rel_err(text_nomask, ref_text_nomask),
          "image_features": _rel_err(image, ref_image),
          "logits_per_image": _rel_err(out["logits_per_image"], ref_out.logits_per_image.numpy()),
          "logits_per_text": _rel_err(out["logits_per_text"], ref_out.logits_per_text.numpy()),
          "cosine": _rel_err(out["image_embeds"] @ out["text_embeds"].T,
                             (ref_out.image_embeds @ ref_out.text_embeds.T).numpy())}
  print(f"CLIPModel relative max errors {errs}")
  assert max(errs.values()) <= TOL, errs
  assert float(variables["params"]["logit_scale"]) == pytest.approx(float(ref.logit_scale.detach()), abs=1e-7)


def test_legacy_eos_config_pools_at_argmax(tmp_path):
  """Hub CLIP configs still say eos_token_id=2: transformers then pools at argmax(ids), and so do we."""
  folder = write_tiny_clip(tmp_path / "legacy", seed=1, tokenizer=False, eos_token_id=2)
  ref = transformers.CLIPModel.from_pretrained(folder).eval()
  model, variables = load_clip(folder)
  assert model.config.text.eos_token_id == 2
  ids, _, _ = _inputs(np.random.default_rng(1))
  with torch.no_grad():
    ref_text = ref.get_text_features(input_ids=torch.from_numpy(ids).long()).pooler_output.numpy()
  text = model.apply(variables, ids, method=CLIPModel.get_text_features)
  assert _rel_err(text, ref_text) <= TOL


def test_config_reads_transformers_defaults(tiny_clip, tmp_path):
  cfg = clip_config(tiny_clip)
  ref = transformers.CLIPConfig.from_pretrained(tiny_clip)
  assert (cfg.projection_dim, cfg.vision.image_size, cfg.vision.patch_size, cfg.vision.hidden_act) == (
      ref.projection_dim, ref.vision_config.image_size, ref.vision_config.patch_size, ref.vision_config.hidden_act)
  assert (cfg.text.vocab_size, cfg.text.eos_token_id, cfg.text.hidden_size) == (
      ref.text_config.vocab_size, ref.text_config.eos_token_id, ref.text_config.hidden_size)
  # A config.json with nothing but the model type: every size is transformers' default (ViT-B/32).
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip", "architectures": ["CLIPModel"]}))
  bare, default = clip_config(str(tmp_path)), transformers.CLIPConfig()
  for ours, theirs in ((bare.text, default.text_config), (bare.vision, default.vision_config)):
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act",
                  "layer_norm_eps"):
      assert getattr(ours, field) == getattr(theirs, field), field
  assert (bare.vision.image_size, bare.vision.patch_size, bare.text.vocab_size, bare.text.eos_token_id) == (
      default.vision_config.image_size, default.vision_config.patch_size, default.text_config.vocab_size,
      default.text_config.eos_token_id)
  assert bare.projection_dim == default.projection_dim


def test_strict_loading_names_the_bad_tensors(tiny_clip, tmp_path):
  from safetensors.numpy import load_file, save_file
  state = load_file(os.path.join(tiny_clip, "model.safetensors"))
  state.pop("visual_projection.weight")
  state["vision_model.extra.weight"] = np.zeros((2, 2), np.float32)
  bad = tmp_path / "bad"
  bad.mkdir()
  save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
  (bad / "config.json").write_text(open(os.path.join(tiny_clip, "config.json")).read())
  with pytest.raises(WeightMismatchError) as err:
    load_clip(str(bad))
  assert "visual_projection/kernel" in str(err.value) and "vision_model.extra.weight" in str(err.value)
  sd_text = tmp_path / "text"
  sd_text.mkdir()
  (sd_text / "config.json").write_text(json.dumps({"model_type": "clip_text_model",
                                                   "architectures": ["CLIPTextModel"]}))
  with pytest.raises(ValueError, match="CLIPModel"):
    load_clip(str(sd_text))


@pytest.mark.parametrize("shape", [(32, 32), (48, 80), (97, 41), (20, 26)])
def test_preprocessing_matches_clip_image_processor(shape):
  """Square, landscape, portrait and upscaled images through transformers' processor sized for the tower."""
  rng = np.random.default_rng(sum(shape))
  images = [rng.integers(0, 256, shape + (3,), dtype=np.uint8) for _ in range(2)]
  proc = transformers.CLIPImageProcessorPil(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})
  ref = proc(images, return_tensors="np")["pixel_values"]
  ours = preprocess_images(images, size=24)
  assert ours.shape == (2, 24, 24, 3)
  err = float(np.abs(np.transpose(ours, (0, 3, 1, 2)) - ref).max())
  print(f"preprocessing {shape}: max abs error {err:.2e}")
  assert err <= 1e-5


def test_preprocessing_of_float_images_and_defaults():
  """Float images in [0, 1] go through uint8 as a saved PNG does; the defaults are CLIP's 224 crop."""
  rng = np.random.default_rng(3)
  image = rng.random((64, 64, 3)).astype(np.float32)
  as_uint8 = np.round(image * 255).astype(np.uint8)
  ref = transformers.CLIPImageProcessorPil()(as_uint8, return_tensors="np")["pixel_values"]
  ours = preprocess_images([image])
  assert ours.shape == (1, 224, 224, 3)
  assert float(np.abs(np.transpose(ours, (0, 3, 1, 2)) - ref).max()) <= 1e-5
  with pytest.raises(ValueError, match="NaN"):
    preprocess_images([np.full((8, 8, 3), np.nan, np.float32)])


def test_vit_b16_names_and_shapes_load_strictly():
  """The paper's CLIP ViT-B/16 (transformers' sizes for openai/clip-vit-base-patch16): every tensor of its state
  dict finds its parameter with the right shape (built on the meta device; zero-copy stand-in arrays)."""
  from diffusion_jax.models.clip_model import CLIPConfig, CLIPModel as FlaxCLIP, clip_from_state_dict
  ref_cfg = transformers.CLIPConfig(vision_config=dict(patch_size=16), projection_dim=512)
  with torch.device("meta"):
    ref = transformers.CLIPModel(ref_cfg)
  state = {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in ref.state_dict().items()}
  raw = json.loads(ref_cfg.to_json_string())
  module = FlaxCLIP(CLIPConfig.from_transformers(raw))
  assert (module.config.vision.image_size, module.config.vision.patch_size, module.config.vision.hidden_size,
          module.config.text.hidden_size, module.config.projection_dim) == (224, 16, 768, 512, 512)
  params = clip_from_state_dict(state, module, "ViT-B/16 (meta)")["params"]
  n = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))
  assert n == sum(int(np.prod(v.shape)) for v in state.values())
  print(f"ViT-B/16: {len(state)} tensors, {n / 1e6:.1f} M parameters mapped")
