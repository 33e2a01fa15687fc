"""FID against pytorch-fid: its FID Inception (random weights, converted with --kind fid_inception), its whole
folder pipeline (PNG reading, resize, pool3 features, statistics, calculate_frechet_distance) against our CLI, and
the Fréchet distance's fallbacks. Tolerances: features rel <= 1e-4 (fp32), FID rel <= 1e-3.

Images: 64 x 64 PNGs of smooth random colour fields (the bilinear upsampling to 299 is part of what is checked),
two sets of 4 with different colour statistics. N is tiny (an Inception forward at 299 px costs about a second
per image on a CPU core), so the covariances are singular: the figure means nothing, but both sides must agree.
"""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need PyTorch (the 'parity' extra)")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from PIL import Image  # noqa: E402

from attngan_jax import convert_torch  # noqa: E402
from attngan_jax.inception import resize_bilinear  # noqa: E402
from helpers import torch_fid_reference  # noqa: E402
from t2i_common.metrics import fid  # noqa: E402
from t2i_common.metrics.features import InceptionExtractor, extract_features, iter_image_folder  # noqa: E402
from t2i_common.weights import WeightMismatchError  # noqa: E402

N = 4  # images per set


def rel_err(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-12))


def colour_fields(n: int, size: int, seed: int, brightness: float) -> np.ndarray:
  """uint8 [n, size, size, 3]: 4 x 4 random colour grids upsampled, plus pixel noise."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, 1, (n, 4, 4, 3)) * brightness
  fine = np.asarray(jax.image.resize(jnp.asarray(coarse), (n, size, size, 3), "bicubic"))
  return np.clip((fine + 0.05 * rng.normal(size=fine.shape)) * 255, 0, 255).round().astype(np.uint8)


def write_folder(path, images):
  os.makedirs(path, exist_ok=True)
  for i, image in enumerate(images):
    Image.fromarray(image).save(os.path.join(path, f"{i:03d}.png"))
  return str(path)


@pytest.fixture(scope="module")
def fid_setup(tmp_path_factory):
  """pytorch-fid's model with random weights, its weights file and our conversion of it."""
  model, inner = torch_fid_reference.pytorch_fid_models(seed=0, output_blocks=(2, 3))
  root = tmp_path_factory.mktemp("fid")
  weights_file = str(root / "pt_inception-random.pth")
  torch.save(inner.state_dict(), weights_file)  # the layout of pytorch-fid's released weights file
  converted = str(root / "fid_inception")
  convert_torch.main(["--kind", "fid_inception", "--src", weights_file, "--out", converted])
  return model, inner, converted, root


def test_resize_matches_torch_bilinear():
  """pytorch-fid's F.interpolate(bilinear, align_corners=False, no antialias), up and down."""
  x = np.random.default_rng(0).uniform(0, 1, (2, 37, 53, 3)).astype(np.float32)
  for size in (299, 20):
    ref = torch.nn.functional.interpolate(torch.tensor(x).permute(0, 3, 1, 2), size=(size, size), mode="bilinear",
                                          align_corners=False).permute(0, 2, 3, 1).numpy()
    assert rel_err(resize_bilinear(jnp.asarray(x), size), ref) <= 1e-5, size


def test_fid_converter_is_strict_and_tells_torchvision_apart(fid_setup):
  _, inner, converted, _ = fid_setup
  model, variables = convert_torch.load_fid_inception(converted)
  assert model.variant == "fid" and model.num_classes == 1008
  state = {k: v.numpy() for k, v in inner.state_dict().items()}
  broken = dict(state, **{"Mixed_7c.branch_pool.conv.weight": np.zeros((192, 2048, 3, 3), np.float32)})
  del broken["Mixed_5b.branch1x1.bn.running_var"]
  with pytest.raises(WeightMismatchError) as err:
    convert_torch.convert_state_dict(broken, "fid_inception")
  assert "Mixed_5b/branch1x1/bn/var" in str(err.value) and "Mixed_7c.branch_pool.conv.weight" in str(err.value)
  torchvision_like = dict(state, **{"AuxLogits.fc.weight": np.zeros((1000, 768), np.float32)})
  with pytest.raises(ValueError, match="torchvision's Inception-v3"):
    convert_torch.convert_state_dict(torchvision_like, "fid_inception")
  headless, _, config = convert_torch.convert_state_dict(state, "fid_inception", keep_fc=False)  # --no-fc
  assert config == {"kind": "fid_inception", "num_classes": None, "variant": "fid"} and headless.num_classes is None
  with pytest.raises(ValueError, match="holds a 'fid_inception', not a 'inception'"):
    convert_torch.load_inception(converted)  # a FID Inception is not silently loaded as torchvision's


def test_fid_matches_pytorch_fid_end_to_end(fid_setup, monkeypatch, capsys):
  """pytorch-fid's calculate_fid_given_paths on two PNG folders vs our CLI on the same folders (via --save-stats and
  the .npz), and the per-image pool3 features of both folders against pytorch-fid's, recorded on the way.

  The FID numbers are compared at pytorch-fid's --dims 768: scipy's sqrtm of a 2048 x 2048 product takes about
  40 s of CPU, twice that for both sides; the 2048-d path differs only in the features, which are compared here
  one by one, and frechet_distance is checked against calculate_frechet_distance below."""
  model, _, converted, root = fid_setup
  _, fid_score = torch_fid_reference.import_pytorch_fid()
  real = write_folder(root / "real", colour_fields(N, 64, seed=1, brightness=1.0))
  fake = write_folder(root / "fake", colour_fields(N, 64, seed=2, brightness=0.6))

  pool3 = []

  class Recording(torch.nn.Module):  # calculate_fid_given_paths(dims=768) reads output 0; keep pool3 (output 1)
    def forward(self, x):
      mixed_6e, pool = model(x)
      pool3.append(pool[:, :, 0, 0].numpy())
      return [mixed_6e]

  class PrebuiltInception:  # calculate_fid_given_paths builds InceptionV3([block]) itself: hand it ours
    BLOCK_INDEX_BY_DIM = type(model).BLOCK_INDEX_BY_DIM

    def __new__(cls, blocks):
      assert list(blocks) == [2]
      return Recording()

  monkeypatch.setattr(fid_score, "InceptionV3", PrebuiltInception)
  ref_fid = fid_score.calculate_fid_given_paths([fake, real], batch_size=N, device="cpu", dims=768, num_workers=0)
  ref_fake_pool3, ref_real_pool3 = pool3

  stats_path = str(root / "real_stats_768.npz")
  fid.main(["--real", real, "--save-stats", stats_path, "--weights", converted, "--dims", "768"])
  out_json = str(root / "fid.json")
  result = fid.main(["--real", stats_path, "--fake", fake, "--weights", converted, "--dims", "768",
                     "--out", out_json])
  printed = capsys.readouterr().out
  e_fid = abs(result["fid"] - ref_fid) / abs(ref_fid)

  # Library API: pool3 features of both folders in one batch of 8, statistics as pytorch-fid's.
  extractor = InceptionExtractor.from_converted(converted, "pool", batch_size=8)
  feats = extract_features(np.concatenate(list(iter_image_folder(fake)) + list(iter_image_folder(real))), extractor)
  e_feat = rel_err(feats, np.concatenate([ref_fake_pool3, ref_real_pool3]))
  _, sigma = fid.activation_statistics(feats[N:])
  e_sigma = rel_err(sigma, np.cov(ref_real_pool3, rowvar=False))
  print(f"FID parity (768-d, N={N} per side): ours {result['fid']:.6f} vs pytorch-fid {ref_fid:.6f}, rel {e_fid:.2e}; "
        f"pool3 features rel {e_feat:.2e}, pool3 covariance rel {e_sigma:.2e}")
  assert feats.shape == (2 * N, 2048) and e_feat <= 1e-4 and e_sigma <= 1e-4
  assert e_fid <= 1e-3
  backend = "pytorch-fid-inception (converted), 768-d Mixed_6e features"
  assert result["backend"] == backend and result["num_images"] == N and result["num_real_images"] == N
  assert f"{N} images vs {N} real" in printed and backend in printed
  with open(out_json) as f:
    assert json.load(f)["fid"] == pytest.approx(result["fid"])
  # pytorch-fid's own loader reads our statistics file.
  ref_mu, _ = fid_score.compute_statistics_of_path(stats_path, None, N, 768, "cpu")
  np.testing.assert_array_equal(ref_mu, fid.load_statistics(stats_path)["mu"])


def test_branch_pools_match_torch():
  """The three branch pools against PyTorch: torchvision's average (padding counted), pytorch-fid's
  count_include_pad=False average (FIDInceptionA/C/E_1) and its max pool (FIDInceptionE_2). The variant wiring
  (which block gets which pool) is checked by the end-to-end parity above."""
  from attngan_jax.inception import _branch_pool
  x = np.random.default_rng(0).normal(size=(2, 5, 6, 4)).astype(np.float32)
  t = torch.tensor(x).permute(0, 3, 1, 2)
  F = torch.nn.functional
  refs = {"avg": F.avg_pool2d(t, 3, 1, 1), "avg_tf": F.avg_pool2d(t, 3, 1, 1, count_include_pad=False),
          "max": F.max_pool2d(t, 3, 1, 1)}
  for pool, ref in refs.items():
    assert rel_err(_branch_pool(jnp.asarray(x), pool), ref.permute(0, 2, 3, 1).numpy()) <= 1e-6, pool
  assert rel_err(refs["avg"], refs["avg_tf"]) > 1e-2  # the edges differ, so the test tells them apart
  with pytest.raises(ValueError, match="unknown branch pool"):
    _branch_pool(jnp.asarray(x), "min")


# ------------------------------------------------------------------------------ Fréchet distance and statistics

def _stats(seed, n=40, d=12, scale=1.0):
  feats = np.random.default_rng(seed).normal(size=(n, d)) * scale + seed
  return fid.activation_statistics(feats)


def test_frechet_distance_matches_pytorch_fid(monkeypatch):
  _, fid_score = torch_fid_reference.import_pytorch_fid()
  (mu1, s1), (mu2, s2) = _stats(0), _stats(1, scale=2.0)
  ours, ref = fid.frechet_distance(mu1, s1, mu2, s2), fid_score.calculate_frechet_distance(mu1, s1, mu2, s2)
  assert abs(ours - ref) <= 1e-10 * abs(ref)
  assert abs(fid.frechet_distance(mu1, s1, mu1, s1)) < 1e-6

  # Singular: 5 samples in 12 dimensions (rank-4 covariances), the usual case of FID on few images.
  (mu1, s1), (mu2, s2) = _stats(2, n=5), _stats(3, n=5)
  ours, ref = fid.frechet_distance(mu1, s1, mu2, s2), fid_score.calculate_frechet_distance(mu1, s1, mu2, s2)
  assert abs(ours - ref) <= 1e-8 * abs(ref)

  # The eps fallback: a first matrix root that is not finite is recomputed with eps on the diagonals.
  from scipy import linalg
  sqrtm, calls = linalg.sqrtm, []

  def first_root_nan(a, *args, **kwargs):
    calls.append(1)
    out = sqrtm(a, *args, **kwargs)
    if len(calls) % 2 == 1:  # the first call of each FID computation
      return (np.full_like(out[0], np.nan), out[1]) if isinstance(out, tuple) else np.full_like(out, np.nan)
    return out

  monkeypatch.setattr(linalg, "sqrtm", first_root_nan)
  with pytest.warns(UserWarning, match="adding 1e-06"):
    ours = fid.frechet_distance(mu1, s1, mu2, s2)
  ref = fid_score.calculate_frechet_distance(mu1, s1, mu2, s2)
  assert len(calls) == 4 and abs(ours - ref) <= 1e-8 * abs(ref)
  monkeypatch.setattr(linalg, "sqrtm", sqrtm)

  # Complex roots: an indefinite "covariance" gives an imaginary diagonal, which both reject.
  bad = np.diag([1.0, -1.0])
  with pytest.raises(ValueError, match="imaginary component"):
    fid.frechet_distance(np.zeros(2), bad, np.zeros(2), np.eye(2))
  with pytest.raises(ValueError, match="Imaginary component"):
    fid_score.calculate_frechet_distance(np.zeros(2), bad, np.zeros(2), np.eye(2))


def test_frechet_distance_bad_input():
  mu, s = _stats(0)
  with pytest.raises(ValueError, match="different dimensions"):
    fid.frechet_distance(mu, s, mu[:-1], s[:-1, :-1])
  with pytest.raises(ValueError, match="NaN"):
    fid.frechet_distance(mu * np.nan, s, mu, s)
  with pytest.raises(ValueError, match="N >= 2"):
    fid.activation_statistics(np.zeros((1, 4)))


class MeanColour:
  """A stand-in extractor (mean colour and its square per image): exercises caching without an Inception."""
  backend, output = "mean-colour (test)", "pool"
  calls = 0

  def __call__(self, images):
    MeanColour.calls += 1
    m = np.asarray(images, np.float64).mean(axis=(1, 2)) / 255
    return np.concatenate([m, m ** 2], axis=1)


def test_real_statistics_cached_per_name_resolution_backend(tmp_path):
  images = colour_fields(6, 8, seed=4, brightness=1.0)
  ex = MeanColour()
  first = fid.real_statistics("shapes-test", 64, lambda: [images[:3], images[3:]], ex, str(tmp_path))
  assert not first["cached"] and first["num_images"] == 6 and MeanColour.calls == 2
  assert os.path.basename(first["path"]) == "shapes-test_64px_mean-colour-test.npz"
  again = fid.real_statistics("shapes-test", 64, lambda: pytest.fail("recomputed"), ex, str(tmp_path))
  assert again["cached"] and np.array_equal(again["sigma"], first["sigma"]) and again["backend"] == ex.backend
  other = fid.real_statistics("shapes-test", 128, lambda: [images], ex, str(tmp_path))
  assert not other["cached"] and other["path"] != first["path"]
  result = fid.compute_fid(colour_fields(5, 8, seed=5, brightness=0.5), first, ex)
  assert result["num_images"] == 5 and result["num_real_images"] == 6 and result["fid"] > 0
  assert "mean-colour (test), 5 images vs 6 real" in fid.summary(result)
  with pytest.raises(ValueError, match="only meaningful with one network"):
    fid.fid_from_statistics(dict(first, backend="another net"), first)


def test_bad_input_messages(tmp_path):
  with pytest.raises(SystemExit):  # neither --fake nor --save-stats
    fid.main(["--real", str(tmp_path), "--weights", str(tmp_path)])
  with pytest.raises(FileNotFoundError, match="not a converted Inception directory"):
    InceptionExtractor.from_converted(str(tmp_path))
  with pytest.raises(ValueError, match="multiple of the mesh size"):
    InceptionExtractor(None, {}, backend="x", batch_size=3)
  with pytest.raises(ValueError, match="unknown Inception output"):
    InceptionExtractor(None, {}, "probs", backend="x", batch_size=8)
  with pytest.raises(ValueError, match="no pictures"):
    iter_image_folder(str(tmp_path))
  write_folder(tmp_path / "mixed", colour_fields(1, 8, 0, 1.0))
  Image.fromarray(colour_fields(1, 9, 0, 1.0)[0]).save(tmp_path / "mixed" / "z.png")
  with pytest.raises(ValueError, match="must have one size"):
    list(iter_image_folder(str(tmp_path / "mixed")))
  with pytest.raises(ValueError, match=r"float images must be in \[0, 1\]"):
    extract_features(np.full((2, 8, 8, 3), -1.0), InceptionExtractor(None, {}, backend="x", batch_size=8))
  from t2i_common.metrics import inception_score
  with pytest.raises(ValueError, match="needs an extractor of logits"):
    inception_score.compute_inception_score(np.zeros((2, 8, 8, 3), np.uint8), MeanColour())
