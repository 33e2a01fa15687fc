"""Scores of a generator on test captions: DAMSM R-precision, and on shapes data the shapes oracle.

`evaluate_generator` generates one image per test caption for the first `num_images` captions of the stream
`test_captions` gives (pass p over the test split draws each image's caption from (seed, p, index), so N larger
than the split, e.g. the paper's 30,000 for 2,933 CUB test images, takes about 11 passes with fresh captions),
with seeds seed, seed + 1, ...; it streams: each batch is scored and dropped, only the first few images are kept
for the grid.

- R-precision (the common protocol, attngan_jax.r_precision): the DAMSM global vector of each generated image
  against the sentence vector of its own caption and of 99 captions of other classes (class ids of the test
  images), top-1, mean +- std over 10 folds. The DAMSM is the one the generator was trained with, as the field
  reports it. A second, independently trained DAMSM (`judge`) can score the same images and captions as well: the
  generator was optimised against its own DAMSM (the DAMSM loss) and can satisfy it with patterns another DAMSM
  does not read as the caption (result["judge"]).
- Shapes data: the oracle (t2i_common.data.shapes_oracle) finds the captioned objects in the last stage's images:
  object_recall, all_present, colour / shape recall, and the recall split between colour-shape pairs seen in
  training and held-out ones (data.shapes.holdout).
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Iterator, Optional

import jax
import ml_collections
import numpy as np

from attngan_jax.gan.damsm import FrozenDAMSM
from attngan_jax.gan.sampling import Sampler, to_unit
from attngan_jax.r_precision import r_precision, r_precision_config
from t2i_common import parallel
from t2i_common.data.loader import make_source
from t2i_common.logging import progress, to_uint8

log = logging.getLogger(__name__)


def eval_config(num_images: int = 30_000, batch_size: int = 50) -> ml_collections.ConfigDict:
  """config.eval: the evaluate command's and the training-time evaluation's options."""
  return ml_collections.ConfigDict({
      "num_images": num_images,    # N generated images (the paper: 30,000 from test captions)
      "batch_size": batch_size,
      "seed": 0,                   # noise seeds seed, seed + 1, ...; captions drawn from (seed, pass, index)
      "grid_images": 16,           # images shown in the evaluation grid
      "r_precision": r_precision_config(),
      # The evaluate command only: a second DAMSM (a pretrain_damsm workdir, e.g. trained with another seed) whose
      # R-precision of the same images is reported as well ("judge"); "" skips it.
      "judge_damsm": "",
      "every_steps": 0,            # > 0: evaluate during training on hook_num_images images (eval/* scalars)
      "hook_num_images": 500,
      # The evaluate command only. Inception score: a converted Inception with its classifier (python -m
      # attngan_jax.convert_torch --kind stackgan_inception for StackGAN's CUB-fine-tuned TF checkpoint, --kind
      # inception for torchvision's ImageNet one, --kind fid_inception for pytorch-fid's); "" skips it.
      "inception_score": ml_collections.ConfigDict({"weights": "", "splits": 10, "transform_input": False}),
      # FID against the real test images: pytorch-fid's Inception converted with --kind fid_inception; "" skips
      # it. Real statistics are cached per dataset, resolution and backend in cache_dir ("" = <workdir>/eval).
      "fid": ml_collections.ConfigDict({"weights": "", "cache_dir": ""}),
  })


def test_captions(data_config: ml_collections.ConfigDict, num: int, seed: int = 0
                  ) -> Iterator[dict[str, Any]]:
  """The first `num` of: pass 0, 1, ... over the test split, each image with one of its captions drawn from
  (seed, pass, index): {"caption", "class_id", "index", "objects" (shapes data, else None)}. No image is read."""
  source = make_source(data_config, "test")
  size = len(source)
  read = source.text_record if hasattr(source, "text_record") else source.__getitem__
  for k in range(num):
    p, index = divmod(k, size)
    record = read(index)
    captions = record["captions"]
    caption = captions[int(np.random.default_rng([seed, p, index]).integers(len(captions)))]
    yield {"caption": caption, "class_id": int(record.get("class_id", index)), "index": index,
           "objects": record.get("objects") if data_config.name == "shapes" else None}


def evaluate_generator(sampler: Sampler, data_config: ml_collections.ConfigDict, cfg: ml_collections.ConfigDict,
                       *, num_images: int, show_progress: bool = True,
                       feature_fns: Optional[dict[str, Callable[[np.ndarray], np.ndarray]]] = None,
                       judge: Optional[FrozenDAMSM] = None) -> dict[str, Any]:
  """Scores (module docstring); returns {"r_precision", "r_precision_std", ..., "oracle": {...} on shapes,
  "grid": {"images": uint8 last-stage images, "captions"}, "num_images"}, and with `judge` (a DAMSM with its
  image encoder) "judge": {"r_precision", "r_precision_std", "damsm"}: R-precision by that DAMSM on the same
  images, captions (tokenized with its vocabulary, the same word subset of over-long captions), mismatches and
  folds.

  feature_fns: name -> function of a uint8 batch of last-stage images giving per-image features (e.g. an
  Inception extractor for IS / FID); their outputs for all images come back as result["features"][name].
  """
  if num_images < 2:
    raise ValueError(f"evaluation needs at least 2 images, got num_images={num_images}.")
  rp = cfg.r_precision
  mismatch = int(rp.num_mismatch)
  damsm_vars = jax.device_put(sampler.damsm.variables, parallel.replicated(sampler.mesh))
  image_vecs, sent_vecs, class_ids, objects, uint8_last = [], [], [], [], []
  if judge is not None:
    judge_vars = jax.device_put(judge.variables, parallel.replicated(sampler.mesh))
    judge_text = judge.text_transform(sampler.words_num)
    judge_image_vecs, judge_sent_vecs = [], []
  grid_images, grid_captions = [], []
  features: dict[str, list[np.ndarray]] = {name: [] for name in (feature_fns or {})}
  stream = test_captions(data_config, num_images, int(cfg.seed))
  bar = progress(num_images, desc="generate", enabled=show_progress)
  done = 0
  while done < num_images:
    items = [next(stream) for _ in range(min(sampler.batch_size, num_images - done))]
    captions = [it["caption"] for it in items]
    seeds = list(range(int(cfg.seed) + done, int(cfg.seed) + done + len(items)))
    out = sampler.generate(captions, seeds, text_seed=int(cfg.seed) + done)
    last = out["images"][-1]
    image_vecs.append(_image_vectors(sampler, sampler.damsm, damsm_vars, last))
    sent_vecs.append(out["sent"])
    if judge is not None:
      judge_image_vecs.append(_image_vectors(sampler, judge, judge_vars, last))
      enc = judge_text.batch(captions, np.random.default_rng(int(cfg.seed) + done))
      judge_sent_vecs.append(np.asarray(_sentence_vectors(judge_vars, enc["tokens"], enc["length"], damsm=judge)))
    class_ids += [it["class_id"] for it in items]
    as_uint8 = to_uint8(to_unit(last))
    if items[0]["objects"] is not None:
      objects += [it["objects"] for it in items]
      uint8_last.append(as_uint8)
    for name, fn in (feature_fns or {}).items():
      features[name].append(np.asarray(fn(as_uint8)))
    keep = max(0, int(cfg.grid_images) - len(grid_images))
    grid_images += list(as_uint8[:keep])
    grid_captions += captions[:keep]
    done += len(items)
    bar.update(len(items))
  bar.close()
  image_vecs, sent_vecs = np.concatenate(image_vecs), np.concatenate(sent_vecs)
  class_ids = np.asarray(class_ids)
  result: dict[str, Any] = {"num_images": int(num_images)}
  others = len(class_ids) - np.max(np.unique(class_ids, return_counts=True)[1])
  if others < mismatch:
    log.warning("only %d captions of other classes for some image: R-precision with %d mismatches instead of %d",
                others, others, mismatch)
    mismatch = int(others)
  if mismatch >= 1:
    score_rp = lambda images, sents: {k: v for k, v in r_precision(
        images, sents, class_ids, num_mismatch=mismatch, num_folds=min(int(rp.num_folds), num_images),
        seed=int(rp.seed)).items() if k != "hits"}
    result.update(score_rp(image_vecs, sent_vecs))
    if judge is not None:
      result["judge"] = dict(score_rp(np.concatenate(judge_image_vecs), np.concatenate(judge_sent_vecs)),
                             damsm=judge.source)
  if objects:
    from t2i_common.data.shapes import parse_holdout
    from t2i_common.data.shapes_oracle import score
    result["oracle"] = score(list(np.concatenate(uint8_last)), objects,
                             holdout=parse_holdout(data_config.shapes.holdout))
  result["grid"] = {"images": np.stack(grid_images), "captions": grid_captions}
  if features:
    result["features"] = {name: np.concatenate(parts) for name, parts in features.items()}
  return result


@functools.partial(jax.jit, static_argnames=("damsm", "mesh"))
def _global_vectors(variables: dict, images: jax.Array, *, damsm: Any, mesh: jax.sharding.Mesh) -> jax.Array:
  return jax.lax.with_sharding_constraint(damsm.encode_image(variables, images)[1], parallel.replicated(mesh))


@functools.partial(jax.jit, static_argnames=("damsm",))
def _sentence_vectors(variables: dict, tokens: jax.Array, lengths: jax.Array, *, damsm: Any) -> jax.Array:
  return damsm.encode_text(variables, tokens, lengths)[1]


def _image_vectors(sampler: Sampler, damsm: FrozenDAMSM, damsm_vars: dict, images: np.ndarray) -> np.ndarray:
  """`damsm`'s global vectors of a batch of generated images (padded to the sampler's batch, sharded)."""
  n = len(images)
  pad = sampler.batch_size - n
  if pad:
    images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
  p, count = jax.process_index(), jax.process_count()
  local = sampler.batch_size // count
  batch = parallel.global_batch({"x": images[p * local:(p + 1) * local]}, sampler.mesh)
  return np.asarray(_global_vectors(damsm_vars, batch["x"], damsm=damsm, mesh=sampler.mesh))[:n]


def flat_scores(result: dict[str, Any], prefix: str) -> dict[str, float]:
  """Scalars of `evaluate_generator`'s result for TensorBoard: prefix/r_precision, prefix/object_recall, ..."""
  out = {}
  for key in ("r_precision", "r_precision_std"):
    if key in result:
      out[f"{prefix}/{key}"] = float(result[key])
    if key in result.get("judge", {}):
      out[f"{prefix}/judge_{key}"] = float(result["judge"][key])
  for key, value in result.get("oracle", {}).items():
    if key not in ("num_images", "num_objects", "num_detections"):
      out[f"{prefix}/{key}"] = float(value)
  return out
