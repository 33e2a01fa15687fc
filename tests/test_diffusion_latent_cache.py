"""The LDM trainer's latent cache (encode the training split once), its min-SNR loss weighting and its
training-timestep sampling."""
import jax
import numpy as np
import pytest

from diffusion_jax.training import objectives
from diffusion_jax.training.latent_cache import LOGVAR, MEAN, LatentCache
from t2i_common.config import load_config
from t2i_common.data.loader import make_loader


def _data():
  return load_config("configs/diffusion/shapes_ldm.py:tiny").data


def _fake_encode(calls):
  """A deterministic stand-in for the VAE encoder: 4 x 4 average pooling, log-variance from the pixel spread."""
  def encode(images):
    calls.append(len(images))
    b, h, w, c = images.shape
    mean = images.reshape(b, h // 4, 4, w // 4, 4, c).mean((2, 4))
    logvar = np.log(0.01 + images.reshape(b, h // 4, 4, w // 4, 4, c).var((2, 4)))
    return mean, logvar
  return encode


def test_cache_rows_match_the_encoded_images_of_each_batch(tmp_path):
  calls = []
  cache = LatentCache.build(_fake_encode(calls), {"w": np.ones(3)}, _data(), batch_size=16, workdir=str(tmp_path))
  assert len(cache) == 64 and sum(calls) == 64
  loader = make_loader(_data(), "train", global_batch_size=8, seed=3)
  for _ in range(3):
    batch = next(loader)
    looked_up = cache.lookup(batch)
    assert not any(k.startswith("image") for k in looked_up)
    mean, logvar = _fake_encode([])(np.asarray(batch["image"]))
    np.testing.assert_allclose(looked_up[MEAN], mean, rtol=0, atol=1e-6)
    np.testing.assert_allclose(looked_up[LOGVAR], logvar, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(looked_up["index"], batch["index"])
    assert list(looked_up["caption"]) == list(batch["caption"])


def test_cache_is_reused_on_resume_and_rebuilt_for_other_weights(tmp_path):
  calls = []
  LatentCache.build(_fake_encode(calls), {"w": np.ones(3)}, _data(), batch_size=16, workdir=str(tmp_path))
  n = len(calls)
  LatentCache.build(_fake_encode(calls), {"w": np.ones(3)}, _data(), batch_size=16, workdir=str(tmp_path))
  assert len(calls) == n, "the saved cache should have been read back"
  LatentCache.build(_fake_encode(calls), {"w": np.zeros(3)}, _data(), batch_size=16, workdir=str(tmp_path))
  assert len(calls) == 2 * n, "other VAE weights must rebuild the cache"


def test_cache_refuses_augmentation_and_unknown_examples(tmp_path):
  data = _data()
  data.random_flip = True
  with pytest.raises(ValueError, match="random_flip=False"):
    LatentCache.build(_fake_encode([]), {}, data)
  cache = LatentCache(np.arange(4), np.zeros((4, 2, 2, 1)), np.ones((4, 2, 2, 1)))
  with pytest.raises(KeyError, match=r"\[7\]"):
    cache.lookup({"index": np.array([1, 7])})


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights(prediction_type):
  abar = np.linspace(0.999, 0.001, 50).astype(np.float32)
  t = np.arange(50)
  w = np.asarray(objectives.min_snr_weights(prediction_type, abar, t, 5.0))
  snr = abar / (1 - abar)
  expected = np.minimum(snr, 5.0) / (snr if prediction_type == "epsilon" else snr + 1)
  np.testing.assert_allclose(w, expected, rtol=1e-5)
  if prediction_type == "epsilon":
    # Low-noise steps (SNR > gamma) are down-weighted, the noisy ones keep weight 1.
    assert w[0] < 0.01 and np.all(w[snr <= 5.0] == pytest.approx(1.0))
  with pytest.raises(ValueError, match="prediction_type"):
    objectives.min_snr_weights("sample", abar, t, 5.0)


def test_weighted_mse_scales_each_example():
  rng = np.random.default_rng(0)
  pred, target = rng.normal(size=(3, 4, 4, 2)), rng.normal(size=(3, 4, 4, 2))
  weights = np.array([0.0, 1.0, 2.0])
  per_example = ((pred - target) ** 2).mean((1, 2, 3))
  assert float(objectives.mse(pred, target, weights)) == pytest.approx(float((weights * per_example).mean()),
                                                                        rel=1e-5)
  assert float(objectives.mse(pred, target)) == pytest.approx(float(per_example.mean()), rel=1e-5)


def test_timestep_sampling():
  key = jax.random.key(0)
  uniform = np.asarray(objectives.sample_timesteps(key, 20000, 1000))
  logit = np.asarray(objectives.sample_timesteps(key, 20000, 1000, "logit_normal", 0.0, 1.0))
  shifted = np.asarray(objectives.sample_timesteps(key, 20000, 1000, "logit_normal", 1.0, 1.0))
  for t in (uniform, logit, shifted):
    assert t.dtype == np.int32 and t.min() >= 0 and t.max() <= 999
  assert abs(uniform.mean() - 499.5) < 10 and uniform.min() < 5 and uniform.max() > 994
  # sigmoid(N(0, 1)): median at T/2, 68 % of the draws in [T sigmoid(-1), T sigmoid(1)] = [268, 731].
  assert abs(np.median(logit) - 500) < 10
  assert 0.66 < np.mean((logit >= 268) & (logit <= 731)) < 0.70
  assert abs(np.median(shifted) - 731) < 10  # a positive mean moves the draws towards noise
  with pytest.raises(ValueError, match="timestep_sampling.kind"):
    objectives.sample_timesteps(key, 4, 1000, "cosine")
