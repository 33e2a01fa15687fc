"""Inception score against torch-fidelity's isc (its `isc_features_to_metric`, the computation behind
`calculate_isc`) and improved-gan's formula, on random logits and end to end: a folder of PNGs through our CLI vs
the class scores of pytorch-fid's random-weight 1008-class Inception (fc without its bias, torch-fidelity's
"logits_unbiased") fed to torch-fidelity. Also a 50-class torchvision-layout classifier (the shape of StackGAN's
CUB-fine-tuned Inception) with ImageNet input transform, logits against torchvision's forward.
Tolerances: IS rel <= 1e-3 (the formula itself agrees to 1e-12), logits rel <= 1e-4.
"""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need PyTorch (the 'parity' extra)")
from PIL import Image  # noqa: E402

from attngan_jax import convert_torch  # noqa: E402
from helpers import torch_fid_reference  # noqa: E402
from t2i_common.metrics import inception_score as isc  # noqa: E402
from t2i_common.metrics.features import InceptionExtractor  # noqa: E402

N = 4  # images end to end (an Inception forward at 299 px costs about a second per image on a CPU core)


def rel_err(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-12))


def images(n: int, size: int, seed: int) -> np.ndarray:
  """uint8 [n, size, size, 3]: a random colour per image plus pixel noise."""
  rng = np.random.default_rng(seed)
  base = rng.uniform(0, 1, (n, 1, 1, 3)) + 0.2 * rng.normal(size=(n, size, size, 3))
  return np.clip(base * 255, 0, 255).round().astype(np.uint8)


def improved_gan_is(probs: np.ndarray, splits: int) -> tuple[float, float]:
  """improved-gan's inception_score.py (Salimans et al.), restated: per split, KL of each row of softmax
  probabilities against the split's mean, averaged and exponentiated; mean and std over splits."""
  scores = []
  for i in range(splits):
    part = probs[i * len(probs) // splits:(i + 1) * len(probs) // splits]
    kl = part * (np.log(part) - np.log(np.mean(part, 0, keepdims=True)))
    scores.append(np.exp(np.mean(np.sum(kl, 1))))
  return float(np.mean(scores)), float(np.std(scores))


def test_inception_score_matches_torch_fidelity_and_improved_gan():
  metric_isc = torch_fid_reference.import_torch_fidelity_isc()
  logits = np.random.default_rng(0).normal(size=(103, 50)) * 3  # 103: splits of unequal size
  for shuffle in (False, True):
    ref = metric_isc.isc_features_to_metric(torch.tensor(logits), splits=10, shuffle=shuffle, rng_seed=2020)
    ours = isc.inception_score(logits, 10, shuffle_seed=2020 if shuffle else None)
    e_mean = abs(ours["inception_score"] - ref["inception_score_mean"]) / ref["inception_score_mean"]
    e_std = abs(ours["inception_score_std"] - ref["inception_score_std"]) / ref["inception_score_std"]
    print(f"IS formula vs torch-fidelity (shuffle={shuffle}): mean rel {e_mean:.1e}, std rel {e_std:.1e}")
    assert e_mean <= 1e-10 and e_std <= 1e-8
  probs = torch.softmax(torch.tensor(logits), dim=1).numpy()
  ours = isc.inception_score(probs, 10, from_logits=False)
  ref_mean, ref_std = improved_gan_is(probs, 10)
  assert ours["inception_score"] == pytest.approx(ref_mean, rel=1e-10)
  assert ours["inception_score_std"] == pytest.approx(ref_std, rel=1e-8)
  assert ours["num_images"] == 103 and ours["splits"] == 10 and len(ours["split_scores"]) == 10
  # Bounds: 1 when every image gets the same distribution, the number of classes for confident, uniform labels.
  assert isc.inception_score(np.zeros((20, 7)), 2)["inception_score"] == pytest.approx(1.0)
  onehot = np.eye(5)[np.arange(20) % 5]
  assert isc.inception_score(onehot, 2, from_logits=False)["inception_score"] == pytest.approx(5.0)


def test_inception_score_bad_input():
  with pytest.raises(ValueError, match="NaN"):
    isc.inception_score(np.full((10, 3), np.nan))
  with pytest.raises(ValueError, match="splits must be in"):
    isc.inception_score(np.zeros((5, 3)), 10)
  with pytest.raises(ValueError, match="probabilities"):
    isc.inception_score(np.ones((10, 3)), 2, from_logits=False)
  with pytest.raises(ValueError, match=r"\[N, C >= 2\]"):
    isc.inception_score(np.zeros(10))


def test_inception_score_end_to_end_against_torch_fidelity(tmp_path, capsys):
  """CLI on a PNG folder with pytorch-fid's random-weight FID Inception (converted, fc kept) vs torch-fidelity's
  isc on the unbiased logits of the same network in PyTorch."""
  metric_isc = torch_fid_reference.import_torch_fidelity_isc()
  model, inner = torch_fid_reference.pytorch_fid_models(seed=1)
  weights = str(tmp_path / "pt_inception-random.pth")
  torch.save(inner.state_dict(), weights)
  converted = str(tmp_path / "fid_inception")
  convert_torch.main(["--kind", "fid_inception", "--src", weights, "--out", converted])
  x = images(N, 64, seed=0)
  os.makedirs(tmp_path / "samples")
  for i, image in enumerate(x):
    Image.fromarray(image).save(tmp_path / "samples" / f"{i}.png")
  with torch.no_grad():
    pool3 = model(torch.tensor(x).permute(0, 3, 1, 2).float() / 255)[0][:, :, 0, 0]
    ref_logits = pool3 @ inner.fc.weight.T  # torch-fidelity's "logits_unbiased"
  ref = metric_isc.isc_features_to_metric(ref_logits, splits=2, shuffle=False)

  out = str(tmp_path / "is.json")
  result = isc.main(["--images", str(tmp_path / "samples"), "--weights", converted, "--splits", "2", "--out", out])
  printed = capsys.readouterr().out
  e_is = abs(result["inception_score"] - ref["inception_score_mean"]) / ref["inception_score_mean"]
  e_std = abs(result["inception_score_std"] - ref["inception_score_std"]) / max(ref["inception_score_std"], 1e-12)
  extractor = InceptionExtractor.from_converted(converted, "class_scores", batch_size=8)
  e_logits = rel_err(extractor(x), ref_logits.numpy())
  print(f"IS end to end (N={N}, 2 splits): ours {result['inception_score']:.6f} +- {result['inception_score_std']:.6f}"
        f" vs torch-fidelity {ref['inception_score_mean']:.6f} +- {ref['inception_score_std']:.6f}, rel {e_is:.1e}; "
        f"unbiased logits rel {e_logits:.1e}")
  assert e_logits <= 1e-4 and e_is <= 1e-3 and e_std <= 1e-3
  assert result["backend"] == "pytorch-fid-inception (converted), logits_unbiased, 1008 classes"
  assert result["num_images"] == N and f"{N} images, 2 splits" in printed and result["backend"] in printed
  with open(out) as f:
    assert json.load(f)["inception_score"] == pytest.approx(result["inception_score"])


def test_fifty_class_torchvision_layout_classifier(tmp_path):
  """A torchvision Inception-v3 with a 50-class head (StackGAN's CUB model has 50 classes) and ImageNet input
  transform, converted with --kind inception: our class scores (with the fc bias) against torchvision's forward."""
  torchvision = torch_fid_reference.import_torchvision()
  net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=50,
                                        transform_input=True)
  torch_fid_reference._randomise(net, seed=2)
  net.eval()
  path = str(tmp_path / "cub_inception.pth")
  torch.save(net.state_dict(), path)
  convert_torch.main(["--kind", "inception", "--src", path, "--out", str(tmp_path / "cub")])
  x = images(3, 96, seed=1)
  with torch.no_grad():
    t = torch.nn.functional.interpolate(torch.tensor(x).permute(0, 3, 1, 2).float() / 255, size=(299, 299),
                                        mode="bilinear", align_corners=False)
    ref = net(2 * t - 1).numpy()
  extractor = InceptionExtractor.from_converted(str(tmp_path / "cub"), "class_scores", batch_size=8,
                                                transform_input=True)
  ours = extractor(x)
  e = rel_err(ours, ref)
  print(f"50-class torchvision-layout classifier: logits rel {e:.1e}")
  assert ours.shape == (3, 50) and e <= 1e-4
  assert extractor.output == "logits" and "with ImageNet input transform" in extractor.backend
  result = isc.compute_inception_score(x, extractor, splits=1)
  assert result["backend"].endswith("logits, 50 classes") and 1.0 <= result["inception_score"] <= 3.0
