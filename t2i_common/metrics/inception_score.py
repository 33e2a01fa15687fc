"""Inception score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), mean +- std over splits.

The images are cut into `splits` (10) consecutive parts, part i = [i N // splits, (i + 1) N // splits) as in
improved-gan's and torch-fidelity's code; in each, p(y) is the mean of p(y|x) over the part and the score is
exp(mean_x sum_y p(y|x) (log p(y|x) - log p(y))). Float64 throughout; mean and population std (np.std) over parts.
`shuffle_seed` permutes the rows first with np.random.RandomState(seed).permutation, torch-fidelity's option
(its default: seed 2020); None keeps the order (improved-gan).

The classifier matters as much as the images: ImageNet's Inception for COCO (pytorch-fid's 1008-class FID
weights, converted with --kind fid_inception, scored on the fc output without its bias as improved-gan and
torch-fidelity do; or torchvision's 1000-class one, --kind inception with --transform-input), StackGAN's
CUB-fine-tuned Inception-v3 for birds (its TF checkpoint birds_valid299/model.ckpt-5000 converted with --kind
stackgan_inception; scored as StackGAN's inception_score.py: its input path, softmax over the 50 bird classes
without the background column). Every result names its backend and N.

CLI: python -m t2i_common.metrics.inception_score --images DIR --weights CONVERTED_DIR [--splits 10]
"""
from __future__ import annotations

import argparse
import json
import math
from typing import Any, Iterable, Optional

import jax
import numpy as np

from t2i_common.metrics.features import InceptionExtractor, extract_features, iter_image_folder


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  shifted = logits - logits.max(axis=1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def inception_score(logits_or_probs: np.ndarray, splits: int = 10, *, from_logits: bool = True,
                    shuffle_seed: Optional[int] = None) -> dict[str, Any]:
  """IS of class scores [N, C]: logits (from_logits=True) or probabilities (rows summing to 1).

  Returns {"inception_score", "inception_score_std", "split_scores", "splits", "num_images"}.
  """
  x = np.asarray(logits_or_probs, np.float64)
  if x.ndim != 2 or x.shape[1] < 2:
    raise ValueError(f"inception_score takes class scores [N, C >= 2], got shape {x.shape}.")
  n = len(x)
  if not 1 <= splits <= n:
    raise ValueError(f"splits must be in [1, number of images = {n}], got {splits}.")
  if not np.all(np.isfinite(x)):
    raise ValueError("the class scores contain NaN/inf: the classifier or the images are broken.")
  if shuffle_seed is not None:
    x = x[np.random.RandomState(shuffle_seed).permutation(n)]
  if from_logits:
    log_p = _log_softmax(x)
    p = np.exp(log_p)
  else:
    if x.min() < 0 or not np.allclose(x.sum(axis=1), 1.0, atol=1e-3):
      raise ValueError("from_logits=False needs probabilities (non-negative rows summing to 1); pass logits with "
                       "from_logits=True instead.")
    p = x
    with np.errstate(divide="ignore"):
      log_p = np.log(p)
  scores = []
  for i in range(splits):
    part, log_part = p[i * n // splits:(i + 1) * n // splits], log_p[i * n // splits:(i + 1) * n // splits]
    log_q = np.log(part.mean(axis=0, keepdims=True))
    # 0 * log 0 = 0: a class with p(y|x) = 0 adds nothing (probability inputs may hold exact zeros).
    kl = (part * np.where(part > 0, log_part - log_q, 0.0)).sum(axis=1)
    scores.append(math.exp(kl.mean()))
  return {"inception_score": float(np.mean(scores)), "inception_score_std": float(np.std(scores)),
          "split_scores": [float(s) for s in scores], "splits": int(splits), "num_images": int(n)}


def compute_inception_score(images: np.ndarray | Iterable[np.ndarray], extractor: InceptionExtractor,
                            splits: int = 10, *, shuffle_seed: Optional[int] = None) -> dict[str, Any]:
  """IS of images (an array or an iterator of uint8 batches) through a logits extractor; adds "backend"."""
  if not extractor.output.startswith("logits"):
    raise ValueError(f"the Inception score needs an extractor of logits (output 'logits', 'logits_unbiased' or "
                     f"'logits_foreground'), not {extractor.output!r}.")
  logits = extract_features(images, extractor, desc="inception score logits")
  result = inception_score(logits, splits, shuffle_seed=shuffle_seed)
  result["backend"] = f"{extractor.backend}, {extractor.output}, {logits.shape[1]} classes"
  return result


def summary(result: dict[str, Any]) -> str:
  """"IS 4.36 +- 0.03 (backend, N images, 10 splits)"."""
  return (f"IS {result['inception_score']:.2f} +- {result['inception_score_std']:.2f} ({result['backend']}, "
          f"{result['num_images']} images, {result['splits']} splits)")


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description="Inception score of a folder of images.")
  parser.add_argument("--images", required=True, help="folder of images (one size)")
  parser.add_argument("--weights", required=True, help="converted Inception with its fc layer "
                                                       "(attngan_jax.convert_torch --kind fid_inception|inception|"
                                                       "stackgan_inception)")
  parser.add_argument("--splits", type=int, default=10)
  parser.add_argument("--batch-size", type=int, default=50, help="rounded up to a multiple of the device count")
  parser.add_argument("--output", choices=("logits", "logits_unbiased", "logits_foreground"), default=None,
                      help="default: logits_unbiased for pytorch-fid's weights, logits_foreground (no background "
                      "class) for StackGAN's, logits otherwise")
  parser.add_argument("--transform-input", action="store_true",
                      help="torchvision's ImageNet weights: ImageNet input normalisation (transform_input=True)")
  parser.add_argument("--shuffle-seed", type=int, default=None, help="permute before splitting (torch-fidelity: 2020)")
  parser.add_argument("--out", default=None, help="also write the result as JSON here")
  args = parser.parse_args(argv)
  batch_size = -(-args.batch_size // jax.device_count()) * jax.device_count()
  extractor = InceptionExtractor.from_converted(args.weights, args.output or "class_scores", batch_size=batch_size,
                                                transform_input=args.transform_input)
  result = compute_inception_score(iter_image_folder(args.images, batch_size), extractor, args.splits,
                                   shuffle_seed=args.shuffle_seed)
  print(summary(result))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
