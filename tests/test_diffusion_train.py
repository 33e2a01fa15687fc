"""End to end: the shapes VAE and LDM trainers (tiny configs) write a pipeline that loads and samples."""
import json
import os

import numpy as np
import pytest

from t2i_common.config import load_config


def test_vae_run_writes_diffusers_vae_with_measured_scale(tiny_shapes_runs):
  root, vae, _ = tiny_shapes_runs
  with open(os.path.join(vae["vae"], "config.json")) as f:
    config = json.load(f)
  assert config["_class_name"] == "AutoencoderKL"
  assert config["scaling_factor"] == pytest.approx(vae["scaling_factor"])
  assert np.isfinite(vae["scaling_factor"]) and vae["scaling_factor"] > 0
  assert os.listdir(root / "vae_run" / "reconstructions")
  lines = [json.loads(l) for l in open(root / "vae_run" / "metrics.jsonl")]
  assert any("rec_loss" in l for l in lines) and any("disc_loss" in l for l in lines)


def test_ldm_run_exports_a_pipeline_that_samples(tiny_shapes_runs):
  from diffusion_jax import from_pretrained
  root, _, ldm = tiny_shapes_runs
  assert ldm["step"] == 4
  for key in ("sample/object_recall", "sample/object_precision", "sample/all_present"):
    assert 0.0 <= ldm[key] <= 1.0
  assert os.path.isfile(root / "ldm_run" / "samples" / "final.png")
  pipe = from_pretrained(ldm["pipeline"])
  images = pipe(["a red circle", "a small blue star"], num_inference_steps=2, guidance_scale=3.0, seeds=[0, 1])
  assert images.shape == (2, 32, 32, 3) and np.all(np.isfinite(images))
  # The vocabulary learned from the training captions keeps each of their words one token.
  from diffusion_jax.clip_vocab import caption_words
  from t2i_common.data.loader import make_source
  caption = make_source(load_config("configs/diffusion/shapes_ldm.py:tiny").data, "train")[0]["captions"][0]
  num_words = sum(caption_words([caption]).values())
  assert pipe.tokenizer([caption]).lengths[0] == num_words + 2


def test_evaluate_cli_scores_the_exported_pipeline(tiny_shapes_runs, tmp_path):
  from diffusion_jax import evaluate
  root, _, ldm = tiny_shapes_runs
  cfg = load_config("configs/diffusion/shapes_ldm.py:tiny", ["model.sampling.num_images=4"])
  result = evaluate.evaluate(cfg, str(tmp_path), pretrained=ldm["pipeline"])
  assert result["num_images"] == 4 and result["num_objects"] >= 4
  for key in ("object_recall", "object_precision", "all_present", "color_recall", "shape_recall"):
    assert 0.0 <= result[key] <= 1.0
  # The config's held-out pairs reach the oracle: the recall is split between seen and held-out pairs.
  assert {"object_recall/seen", "object_recall/held_out"} & set(result)
  with open(tmp_path / "eval" / "samples.json") as f:
    assert json.load(f)["object_recall"] == result["object_recall"]
  assert os.path.isfile(tmp_path / "samples" / "eval.png")
  with pytest.raises(FileNotFoundError, match="model_index.json"):
    evaluate.evaluate(cfg, str(tmp_path / "empty"))
  # Restoration: the tiny config samples 2 DDIM steps (timesteps 501, 1), so t = 600 starts from 501 and
  # t = 0 is the VAE's reconstruction.
  restored = evaluate.evaluate(cfg, str(tmp_path), pretrained=ldm["pipeline"], restore_from=(0, 600))["restoration"]
  assert [restored[t]["from_timestep"] for t in (0, 600)] == [0, 501]
  assert all(0.0 <= restored[t]["object_recall"] <= 1.0 for t in (0, 600))
  assert os.path.isfile(tmp_path / "samples" / "restore_600.png")
  with pytest.raises(ValueError, match="outside"):
    evaluate.evaluate(cfg, str(tmp_path), pretrained=ldm["pipeline"], restore_from=(1000,))


def test_ldm_pipeline_reads_in_diffusers(tiny_shapes_runs):
  pytest.importorskip("torch", reason="the parity extra (torch, diffusers) is not installed")
  diffusers = pytest.importorskip("diffusers")
  _, _, ldm = tiny_shapes_runs
  pipe = diffusers.StableDiffusionPipeline.from_pretrained(ldm["pipeline"], safety_checker=None,
                                                           requires_safety_checker=False)
  out = pipe("a red circle", num_inference_steps=2, guidance_scale=3.0, output_type="np", height=32, width=32)
  assert out.images.shape == (1, 32, 32, 3)


def test_ldm_needs_a_vae(tmp_path):
  from diffusion_jax.train import train_and_evaluate
  cfg = load_config("configs/diffusion/shapes_ldm.py:tiny")
  with pytest.raises(ValueError, match="vae_path"):
    train_and_evaluate(cfg, str(tmp_path))


@pytest.mark.parametrize("override,message", [("model.prediction_type=x0", "prediction_type"),
                                               ("model.latents=median", "model.latents"),
                                               ("model.timestep_sampling.kind=cosine", "timestep_sampling.kind")])
def test_misspelt_ldm_options_fail_before_training(tmp_path, override, message):
  from diffusion_jax.train import train_and_evaluate
  cfg = load_config("configs/diffusion/shapes_ldm.py:tiny", [override, "model.vae_path=/nope"])
  with pytest.raises(ValueError, match=message):
    train_and_evaluate(cfg, str(tmp_path))


def test_finetune_variant_trains_a_pretrained_sd_folder(tmp_path):
  """The `finetune` variant reads a diffusers SD folder, trains the UNet only, and exports the same layout."""
  pytest.importorskip("torch", reason="the tiny SD folder is written with diffusers (parity extra)")
  pytest.importorskip("diffusers")
  import jax
  from diffusion_fixtures import write_tiny_sd
  from diffusion_jax import from_pretrained
  from diffusion_jax.convert import load_text_encoder
  from diffusion_jax.train import train_and_evaluate
  folder = write_tiny_sd(tmp_path, "sd1")
  cfg = load_config("configs/diffusion/shapes_ldm.py:finetune", [
      f"model.pretrained={folder}", "data.image_sizes=(32,)", "data.shapes.num_train=16",
      "data.shapes.num_test=8", "train.batch_size=8", "train.num_steps=2", "train.fast_compile=True",
      "model.sampling.num_images=8", "model.sampling.steps=2", "logging.images_every_steps=1000",
      "checkpoint.every_steps=2"])
  result = train_and_evaluate(cfg, str(tmp_path / "run"))
  exported = from_pretrained(result["pipeline"])
  before = load_text_encoder(f"{folder}/text_encoder")[1]
  after = load_text_encoder(f"{result['pipeline']}/text_encoder")[1]
  same = jax.tree.map(lambda a, b: bool((a == b).all()), before, after)
  assert all(jax.tree.leaves(same)), "the frozen text encoder changed"
  assert exported.unet.config == from_pretrained(folder).unet.config


def test_cached_latents_give_the_step_that_encoding_gives(tiny_shapes_runs, tmp_path):
  """config.model.cache_latents only moves the VAE encoder out of the step: same posterior, same loss."""
  import jax
  from diffusion_jax.training.latent_cache import MEAN
  from diffusion_jax.training.ldm_trainer import LDMTrainer
  from t2i_common import parallel
  from t2i_common.data.loader import make_loader
  _, vae, _ = tiny_shapes_runs
  cfg = load_config("configs/diffusion/shapes_ldm.py:tiny", [f"model.vae_path={vae['vae']}"])
  trainer = LDMTrainer(cfg, str(tmp_path))
  options = parallel.run_once_compiler_options()
  state = jax.jit(trainer.init_state, compiler_options=options)(jax.random.key(0))
  batch = next(make_loader(cfg.data, "train", global_batch_size=8, seed=0, text_transform=trainer.text_transform))
  mesh = parallel.create_mesh(cfg.mesh)
  step = jax.jit(trainer.train_step, compiler_options=options)
  encoded_batch = trainer.batch_to_device(batch, mesh)
  assert MEAN not in encoded_batch
  _, encoded = step(state, encoded_batch)
  trainer.build_latent_cache(batch_size=16)
  cached_batch = trainer.batch_to_device(batch, mesh)
  assert MEAN in cached_batch and "image" not in cached_batch
  _, cached = step(state, cached_batch)
  assert float(cached["loss"]) == pytest.approx(float(encoded["loss"]), rel=1e-4, abs=1e-6)
  assert float(cached["grad_norm"]) == pytest.approx(float(encoded["grad_norm"]), rel=1e-3)
