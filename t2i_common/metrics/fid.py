"""Fréchet Inception distance (Heusel et al. 2017) as pytorch-fid computes it.

FID = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) over the 2048-d pool3 features of pytorch-fid's Inception
(the TF 2015-12-05 graph; `InceptionV3(variant="fid")` with its converted weights). Statistics in float64: mu the
mean, S the unbiased covariance (np.cov). The matrix root is scipy.linalg.sqrtm as in pytorch-fid, with its
fallbacks: a non-finite root is recomputed with eps (1e-6) added to both diagonals, and a complex root is
accepted (real part) only if the imaginary parts of its diagonal are within 1e-3 of 0.

Cost: scipy's sqrtm of a 2048 x 2048 product takes about 40 s of one CPU core, whatever N.

FID depends on the network and on N (it is biased upwards for small N): every result carries both,
{"fid", "backend", "num_images", "num_real_images"}, and `summary` prints them with the figure.

Real statistics are cached as .npz (keys mu, sigma as pytorch-fid's --save-stats writes them, plus num_images and
backend) under a name built from the dataset, the resolution and the backend (`real_statistics`).

CLI:
  python -m t2i_common.metrics.fid --real DIR_OR_NPZ --fake DIR --weights CONVERTED_DIR [--batch-size 50]
      [--dims 2048|768] [--out result.json]
  python -m t2i_common.metrics.fid --real DIR --save-stats OUT.npz --weights CONVERTED_DIR
CONVERTED_DIR: python -m attngan_jax.convert_torch --kind fid_inception --src pt_inception-2015-12-05-6726825d.pth
"""
from __future__ import annotations

import argparse
import json
import os
import re
import warnings
from typing import Any, Callable, Iterable, Optional

import jax
import numpy as np
from scipy import linalg

from t2i_common.metrics.features import InceptionExtractor, extract_features, iter_image_folder

EPS = 1e-6


def activation_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mu [D], sigma [D, D]) in float64 of features [N, D], N >= 2 (pytorch-fid: np.mean, np.cov)."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(f"activation statistics need features [N >= 2, D], got shape {features.shape}.")
  if not np.all(np.isfinite(features)):
    raise ValueError("features contain NaN/inf: the Inception or the images are broken.")
  return np.mean(features, axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = EPS) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), pytorch-fid's calculate_frechet_distance."""
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f"statistics of different dimensions: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
                     f"{sigma2.shape} (both sides must come from the same Inception layer).")
  for name, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
    if not np.all(np.isfinite(a)):
      raise ValueError(f"{name} contains NaN/inf.")
  diff = mu1 - mu2
  with warnings.catch_warnings():  # pytorch-fid asks sqrtm not to print (disp=False); a singular product is usual
    warnings.simplefilter("ignore", linalg.LinAlgWarning)
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
      warnings.warn(f"FID: singular product of covariances; adding {eps} to their diagonals (as pytorch-fid).")
      offset = np.eye(sigma1.shape[0]) * eps
      covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"FID: the matrix root has an imaginary component of {np.max(np.abs(covmean.imag)):.3g} "
                       "(covariances not positive semi-definite, or too few images for their dimension).")
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


# ----------------------------------------------------------------------------------------------------------------
# Statistics files and the cache of real statistics.

def save_statistics(path: str, mu: np.ndarray, sigma: np.ndarray, *, num_images: int, backend: str) -> None:
  """Writes mu, sigma (readable by pytorch-fid) and num_images, backend to an .npz file."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  np.savez(path, mu=mu, sigma=sigma, num_images=np.int64(num_images), backend=np.str_(backend))


def load_statistics(path: str) -> dict[str, Any]:
  """{"mu", "sigma", "num_images" (None if unknown), "backend" (None if unknown, e.g. pytorch-fid's files)}."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"statistics file {path!r} does not exist.")
  with np.load(path) as f:
    if "mu" not in f or "sigma" not in f:
      raise ValueError(f"{path!r} has no mu / sigma arrays (keys {sorted(f.keys())}); is it an FID statistics file?")
    return {"mu": f["mu"].astype(np.float64), "sigma": f["sigma"].astype(np.float64),
            "num_images": int(f["num_images"]) if "num_images" in f else None,
            "backend": str(f["backend"]) if "backend" in f else None}


def stats_cache_path(cache_dir: str, name: str, resolution: int, backend: str) -> str:
  """<cache_dir>/<name>_<resolution>px_<backend slug>.npz, e.g. birds-test_256px_pytorch-fid-inception-converted.npz."""
  slug = re.sub(r"[^A-Za-z0-9]+", "-", backend).strip("-").lower()
  return os.path.join(cache_dir, f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}_{int(resolution)}px_{slug}.npz")


def real_statistics(name: str, resolution: int, images_fn: Callable[[], Iterable[np.ndarray]],
                    extractor: InceptionExtractor, cache_dir: str) -> dict[str, Any]:
  """Statistics of a dataset's real images, computed once per (name, resolution, backend) and cached.

  images_fn: returns the batches of real images (called only when the cache has no file yet).
  """
  path = stats_cache_path(cache_dir, name, resolution, extractor.backend)
  if os.path.isfile(path):
    stats = load_statistics(path)
    if stats["backend"] != extractor.backend:
      raise ValueError(f"{path!r} holds statistics of backend {stats['backend']!r}, not {extractor.backend!r}; "
                       "delete it to recompute.")
    return dict(stats, path=path, cached=True)
  feats = extract_features(images_fn(), extractor, desc=f"real statistics {name} {resolution}px")
  mu, sigma = activation_statistics(feats)
  save_statistics(path, mu, sigma, num_images=len(feats), backend=extractor.backend)
  return {"mu": mu, "sigma": sigma, "num_images": len(feats), "backend": extractor.backend, "path": path,
          "cached": False}


# ----------------------------------------------------------------------------------------------------------------
# FID of images.

def fid_from_statistics(fake: dict[str, Any], real: dict[str, Any]) -> dict[str, Any]:
  """FID between two statistics dicts {"mu", "sigma", "num_images", "backend"} (as `load_statistics` returns)."""
  if real.get("backend") and fake.get("backend") and real["backend"] != fake["backend"]:
    raise ValueError(f"real statistics from backend {real['backend']!r} but fake from {fake['backend']!r}: "
                     "FID is only meaningful with one network on both sides.")
  return {"fid": frechet_distance(fake["mu"], fake["sigma"], real["mu"], real["sigma"]),
          "backend": fake.get("backend") or real.get("backend"), "num_images": fake.get("num_images"),
          "num_real_images": real.get("num_images")}


def statistics_of(images: np.ndarray | Iterable[np.ndarray], extractor: InceptionExtractor,
                  desc: str = "fid features") -> dict[str, Any]:
  """{"mu", "sigma", "num_images", "backend"} of images (an array or an iterator of uint8 batches)."""
  feats = extract_features(images, extractor, desc=desc)
  mu, sigma = activation_statistics(feats)
  return {"mu": mu, "sigma": sigma, "num_images": len(feats), "backend": extractor.backend}


def compute_fid(fake_images: np.ndarray | Iterable[np.ndarray], real: dict[str, Any] | np.ndarray | Iterable,
                extractor: InceptionExtractor) -> dict[str, Any]:
  """FID of generated images against real statistics (a dict from `real_statistics` / `load_statistics`) or
  real images. Returns {"fid", "backend", "num_images", "num_real_images"}."""
  if not isinstance(real, dict):
    real = statistics_of(real, extractor, desc="fid real features")
  return fid_from_statistics(statistics_of(fake_images, extractor, desc="fid fake features"), real)


def summary(result: dict[str, Any]) -> str:
  """"FID 23.98 (pytorch-fid-inception (converted), 30000 images vs 2933 real)"."""
  return (f"FID {result['fid']:.2f} ({result['backend']}, {result['num_images']} images vs "
          f"{result['num_real_images']} real)")


def _statistics_of_path(path: str, extractor: InceptionExtractor, batch_size: int) -> dict[str, Any]:
  if path.endswith(".npz"):
    return load_statistics(path)
  return statistics_of(iter_image_folder(path, batch_size), extractor, desc=f"features of {path}")


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description="FID between two image folders (or a folder and an .npz of "
                                               "statistics), pytorch-fid's computation in JAX.")
  parser.add_argument("--real", required=True, help="folder of real images, or an .npz of statistics")
  parser.add_argument("--fake", default=None, help="folder of generated images")
  parser.add_argument("--weights", required=True, help="converted Inception directory (attngan_jax.convert_torch "
                                                       "--kind fid_inception)")
  parser.add_argument("--batch-size", type=int, default=50, help="rounded up to a multiple of the device count")
  parser.add_argument("--dims", type=int, choices=(2048, 768), default=2048,
                      help="features: 2048 pool3 (the FID), 768 Mixed_6e averaged (pytorch-fid's --dims 768)")
  parser.add_argument("--save-stats", default=None, help="write the statistics of --real to this .npz and stop")
  parser.add_argument("--out", default=None, help="also write the result as JSON here")
  args = parser.parse_args(argv)
  if (args.fake is None) == (args.save_stats is None):
    parser.error("give either --fake (compute FID) or --save-stats (write the statistics of --real).")
  args.batch_size = -(-args.batch_size // jax.device_count()) * jax.device_count()
  extractor = InceptionExtractor.from_converted(args.weights, "pool" if args.dims == 2048 else "mixed_6e_pool",
                                                batch_size=args.batch_size)
  if args.save_stats:
    if args.real.endswith(".npz"):
      parser.error("--save-stats needs a folder of images as --real.")
    stats = _statistics_of_path(args.real, extractor, args.batch_size)
    save_statistics(args.save_stats, stats["mu"], stats["sigma"], num_images=stats["num_images"],
                    backend=stats["backend"])
    result = {"path": args.save_stats, "num_images": stats["num_images"], "backend": stats["backend"]}
    print(f"wrote {args.save_stats}: statistics of {stats['num_images']} images ({stats['backend']})")
  else:
    real = _statistics_of_path(args.real, extractor, args.batch_size)
    if real["backend"] not in (None, extractor.backend):
      parser.error(f"{args.real} holds statistics of {real['backend']!r}, but --weights is {extractor.backend!r}.")
    result = fid_from_statistics(_statistics_of_path(args.fake, extractor, args.batch_size), real)
    if real["backend"] is None:
      result["note"] = f"{args.real} names no backend (e.g. written by pytorch-fid): assumed to be the same network"
    print(summary(result))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
