"""Scores an AttnGAN generator on test captions: R-precision, the shapes oracle, Inception score and FID.

    python -m attngan_jax.evaluate --config configs/attngan/attngan_shapes.py --workdir runs/attngan_shapes
    python -m attngan_jax.evaluate --config configs/attngan/attngan_birds.py --workdir runs/attngan_birds \
        --config.eval.inception_score.weights=weights/inception_cub --config.eval.fid.weights=weights/fid_inception

The generator: <workdir>/generator (the EMA generator attngan_jax.train exported, scored with the DAMSM it was
trained with), or --generator: a directory of that kind, or the reference's netG_*.pth / a converted one
(`python -m attngan_jax.convert_torch --kind generator`), which is read with config.model (set
model.reference_mask_bug=True for the released generators) and scored with config.damsm's encoders.

config.eval.num_images images (the paper: 30,000) are generated from test captions, passes over the test split
with fresh captions when N exceeds it (attngan_jax.gan.evaluation), and scored:
- R-precision with the DAMSM (1 true + 99 captions of other classes, top-1, 10 folds; attngan_jax.r_precision);
  with eval.judge_damsm (another pretrain_damsm workdir) also by that DAMSM, which the generator was not trained
  against (--config.eval.judge_damsm=runs/damsm_shapes_seed1);
- shapes data: the oracle (object_recall, all_present, colour / shape recall, seen vs held-out pairs);
- eval.inception_score.weights set: the Inception score of the last stage's images (eval.inception_score.splits
  splits; t2i_common.metrics.inception_score), with the classifier named in the result;
- eval.fid.weights set: FID against the real test images at the last stage's size (real statistics cached per
  dataset, resolution and backend; t2i_common.metrics.fid), printed with its backend and N.
Writes <workdir>/eval/attngan.json, <workdir>/eval/grid.png (the first eval.grid_images images, captioned) and
test/* scalars + the grid to TensorBoard at the generator's step.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterator, Optional

import jax
import ml_collections
import numpy as np

from t2i_common.entry_point import run_config_command

log = logging.getLogger(__name__)
RESULT_FILE = "attngan.json"


def load_generator_and_damsm(config: ml_collections.ConfigDict, workdir: str, generator: Optional[str] = None):
  """(generator, variables, FrozenDAMSM, words_num, step) for the sources of the module docstring."""
  from attngan_jax import convert_torch
  from attngan_jax.gan.damsm import FrozenDAMSM
  from attngan_jax.gan.trainer import GENERATOR_DIR, load_damsm, load_exported_generator

  path = generator or os.path.join(workdir, GENERATOR_DIR)
  saved = None
  config_path = os.path.join(path, convert_torch.CONFIG_FILE)
  if os.path.isdir(path) and os.path.isfile(config_path):
    with open(config_path) as f:
      saved = json.load(f)
  if saved is not None and "damsm" in saved:  # exported by attngan_jax.train
    gen, variables, saved = load_exported_generator(path)
    dirs = saved["damsm"]
    if dirs.get("text_encoder") and dirs.get("image_encoder"):
      damsm = FrozenDAMSM.from_dirs(dirs["text_encoder"], dirs["image_encoder"], dirs.get("vocab_file", ""))
    else:
      damsm = load_damsm(config, workdir)
    return gen, variables, damsm, int(saved.get("words_num", config.model.words_num)), int(saved.get("step", 0))
  if generator is None and not os.path.isdir(path):
    raise FileNotFoundError(f"{path!r} does not exist: train with python -m attngan_jax.train first, or pass "
                            "--generator (an exported or converted generator, or a netG_*.pth).")
  gen, variables = convert_torch.load_generator(path, config.model)
  return gen, variables, load_damsm(config, workdir), int(config.model.words_num), 0


class _RealBatches:
  """The test split's real images at `size` px as uint8 batches (every process reads all of them); len() is the
  number of images (the feature progress bar's total)."""

  def __init__(self, config: ml_collections.ConfigDict, size: int):
    self.config, self.size = config, size

  def __len__(self) -> int:
    from t2i_common.data.loader import make_source
    return len(make_source(self.config.data, "test"))

  def __iter__(self) -> Iterator[np.ndarray]:
    from t2i_common.data.loader import iterate_eval
    from t2i_common.logging import to_uint8
    data = self.config.data
    key = "image" if len(data.image_sizes) == 1 else f"image_{self.size}"
    for batch in iterate_eval(data, "test", int(self.config.eval.batch_size), seed=int(self.config.eval.seed),
                              process_index=0, process_count=1):
      yield to_uint8((np.asarray(batch[key])[batch["mask"]] + 1.0) / 2.0)


def evaluate(config: ml_collections.ConfigDict, workdir: str, *, generator: Optional[str] = None,
             num_images: Optional[int] = None) -> dict[str, Any]:
  """Generates and scores as the module docstring says; returns the result (and "path" of its JSON)."""
  from PIL import Image

  from attngan_jax.gan.evaluation import evaluate_generator, flat_scores
  from attngan_jax.gan.sampling import Sampler
  from attngan_jax.r_precision import summary as rp_summary
  from t2i_common import parallel
  from t2i_common.logging import CAPTIONED_MIN_SIDE, MetricWriter, image_grid, write_eval_json

  parallel.initialize_distributed(config.distributed)
  mesh = parallel.create_mesh(config.mesh)
  ev = config.eval
  n = int(num_images or ev.num_images)
  gen, variables, damsm, words_num, step = load_generator_and_damsm(config, workdir, generator)
  size = gen.image_sizes[-1]
  sampler = Sampler(gen, variables, damsm, words_num, mesh=mesh, batch_size=int(ev.batch_size))
  batch = sampler.batch_size  # eval.batch_size rounded up to a multiple of the mesh size
  feature_fns, extractors = {}, {}
  if ev.inception_score.weights or ev.fid.weights:
    from t2i_common.metrics.features import InceptionExtractor
    if ev.inception_score.weights:
      extractors["inception_score"] = InceptionExtractor.from_converted(
          ev.inception_score.weights, "class_scores", transform_input=bool(ev.inception_score.transform_input),
          batch_size=batch, mesh=mesh)
    if ev.fid.weights:
      extractors["fid"] = InceptionExtractor.from_converted(ev.fid.weights, "pool", batch_size=batch, mesh=mesh)
    feature_fns = dict(extractors)
  log.info("generating %d images from %s test captions (%d stage(s), %d px)", n, config.data.name,
           len(gen.image_sizes), size)
  judge = None
  if ev.judge_damsm:
    from attngan_jax.gan.trainer import load_damsm
    judge_config = ml_collections.ConfigDict(config.to_dict())
    judge_config.damsm.update(workdir=ev.judge_damsm, text_encoder="", image_encoder="", vocab_file="")
    judge = load_damsm(judge_config, workdir)
  result = evaluate_generator(sampler, config.data, ev, num_images=n, feature_fns=feature_fns, judge=judge)
  grid, features = result.pop("grid"), result.pop("features", {})
  summaries = []
  if "r_precision" in result:
    summaries.append(rp_summary(result))
  if "judge" in result:
    summaries.append(f"{rp_summary(result['judge'])}, judged by the DAMSM of {ev.judge_damsm}")
  if "inception_score" in features:
    from t2i_common.metrics import inception_score as is_lib
    result["inception_score"] = is_lib.inception_score(features["inception_score"], int(ev.inception_score.splits))
    result["inception_score"]["backend"] = extractors["inception_score"].backend
    summaries.append(is_lib.summary(result["inception_score"]))
  if "fid" in features:
    from t2i_common.metrics import fid as fid_lib
    mu, sigma = fid_lib.activation_statistics(features["fid"])
    fake = {"mu": mu, "sigma": sigma, "num_images": len(features["fid"]), "backend": extractors["fid"].backend}
    real = fid_lib.real_statistics(f"{config.data.name}-test", size, lambda: _RealBatches(config, size),
                                   extractors["fid"], ev.fid.cache_dir or os.path.join(workdir, "eval"))
    result["fid"] = dict(fid_lib.fid_from_statistics(fake, real), real_statistics=real["path"])
    summaries.append(fid_lib.summary(result["fid"]))
  if "oracle" in result:
    o = result["oracle"]
    summaries.append(f"shapes oracle: object recall {100 * o['object_recall']:.1f} %, all present "
                     f"{100 * o['all_present']:.1f} % ({o['num_images']} images)")
  result.update(dataset=config.data.name, step=step, image_size=size, summary=summaries)
  picture = image_grid(grid["images"], grid["captions"], min_side=CAPTIONED_MIN_SIDE)
  writer = MetricWriter(workdir)
  scalars = flat_scores(result, "test")
  if "inception_score" in result:
    scalars.update({"test/inception_score": result["inception_score"]["inception_score"],
                    "test/inception_score_std": result["inception_score"]["inception_score_std"]})
  if "fid" in result:
    scalars["test/fid"] = result["fid"]["fid"]
  writer.write_scalars(step, scalars)
  writer.write_images(step, {"test/samples": picture})
  writer.close()
  if jax.process_index() == 0:
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    Image.fromarray(picture).save(os.path.join(workdir, "eval", "grid.png"))
  return write_eval_json(workdir, RESULT_FILE, result)


def main(args) -> None:
  result = evaluate(args.config, args.workdir, generator=args.generator, num_images=args.num_images)
  for line in result["summary"]:
    print(line)
  print(f"wrote {result.get('path')}")


if __name__ == "__main__":
  from absl import flags
  flags.DEFINE_string("generator", None, "Generator to score instead of <workdir>/generator (see the docstring).")
  flags.DEFINE_integer("num_images", None, "Images to generate (default: config.eval.num_images).")
  run_config_command(main, config_kind="AttnGAN",
                     workdir_help="Run folder of attngan_jax.train; results go to <workdir>/eval.")
