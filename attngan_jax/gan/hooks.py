"""Periodic pictures and scores during AttnGAN training (hooks of t2i_common.train_loop), with the EMA generator.

- `SampleHook` (every logging.images_every_steps): fixed test captions with fixed seeds ->
  <workdir>/samples/step_<step>.png (every stage of every caption), <workdir>/samples/attention_step_<step>.png
  (the paper's attention figure: top-5 words per attention stage) and the TensorBoard images "samples" and
  "attention"; on shapes data the oracle's scores of these samples as sample/* scalars.
- `EvalHook` (every eval.every_steps > 0): attngan_jax.gan.evaluation on eval.hook_num_images test captions,
  written as eval/* scalars (R-precision; the oracle on shapes data).
"""
from __future__ import annotations

import logging
import os

import jax
import ml_collections
import numpy as np
from PIL import Image

from attngan_jax.gan.evaluation import evaluate_generator, flat_scores, test_captions
from attngan_jax.gan.sampling import Sampler, attention_figure, stage_grid, to_unit
from attngan_jax.gan.trainer import GANState, GANTrainer
from t2i_common.logging import to_uint8

log = logging.getLogger(__name__)


def sample_config(num_captions: int = 8) -> ml_collections.ConfigDict:
  """config.sample: what the training-time sample pictures show."""
  return ml_collections.ConfigDict({
      "num_captions": num_captions,   # the first test captions (one per test image, drawn from seed)
      "seed": 0,                      # noise seeds seed, seed + 1, ...
      "attention_captions": 4,        # captions in the attention figure
      "top_k": 5,                     # words per attention stage
  })


def make_sampler(trainer: GANTrainer, state: GANState, mesh: jax.sharding.Mesh, batch_size: int) -> Sampler:
  return Sampler(trainer.generator, jax.device_get(state.ema_variables()), trainer.damsm, trainer.words_num,
                 mesh=mesh, batch_size=batch_size)


class SampleHook:
  """Sample and attention pictures of fixed test captions (module docstring)."""

  def __init__(self, trainer: GANTrainer, mesh: jax.sharding.Mesh, every_steps: int, workdir: str):
    self.trainer, self.mesh, self.every_steps = trainer, mesh, every_steps
    self.out_dir = os.path.join(workdir, "samples")
    cfg = trainer.config.sample
    items = list(test_captions(trainer.config.data, int(cfg.num_captions), int(cfg.seed)))
    self.captions = [it["caption"] for it in items]
    self.objects = [it["objects"] for it in items] if items and items[0]["objects"] is not None else None
    self.seeds = list(range(int(cfg.seed), int(cfg.seed) + len(items)))
    self.sampler = None

  def pictures(self, state: GANState) -> dict[str, np.ndarray]:
    """{"samples": stage grid, "attention": attention figure (with >= 2 stages)} as uint8, and the outputs."""
    if self.sampler is None:
      self.sampler = make_sampler(self.trainer, state, self.mesh, len(self.captions))
    else:
      self.sampler.set_generator_variables(jax.device_get(state.ema_variables()))
    out = self.sampler.generate(self.captions, self.seeds)
    pictures = {"samples": stage_grid(out["images"], self.captions)}
    if out["maps"]:
      cfg = self.trainer.config.sample
      n = min(int(cfg.attention_captions), len(self.captions))
      words = [self.sampler.words(out["tokens"][i], out["length"][i]) for i in range(n)]
      pictures["attention"] = attention_figure([x[:n] for x in out["images"]], [m[:n] for m in out["maps"]], words,
                                               k=int(cfg.top_k))
    self.last_outputs = out
    return pictures

  def __call__(self, state: GANState, step: int, writer) -> None:
    pictures = self.pictures(state)
    if jax.process_index() == 0:
      os.makedirs(self.out_dir, exist_ok=True)
      Image.fromarray(pictures["samples"]).save(os.path.join(self.out_dir, f"step_{step:07d}.png"))
      if "attention" in pictures:
        Image.fromarray(pictures["attention"]).save(os.path.join(self.out_dir, f"attention_step_{step:07d}.png"))
    writer.write_images(step, pictures)
    if self.objects is not None:
      from t2i_common.data.shapes import parse_holdout
      from t2i_common.data.shapes_oracle import score
      last = to_uint8(to_unit(self.last_outputs["images"][-1]))
      result = score(list(last), self.objects, holdout=parse_holdout(self.trainer.config.data.shapes.holdout))
      writer.write_scalars(step, flat_scores({"oracle": result}, "sample"))


class EvalHook:
  """R-precision (and the shapes oracle) of eval.hook_num_images generated images; keeps the result in `last`."""

  def __init__(self, trainer: GANTrainer, mesh: jax.sharding.Mesh, every_steps: int):
    self.trainer, self.mesh, self.every_steps = trainer, mesh, every_steps
    self.sampler = None
    self.last: dict = {}

  def evaluate(self, state: GANState) -> dict:
    cfg = self.trainer.config.eval
    if self.sampler is None:
      self.sampler = make_sampler(self.trainer, state, self.mesh, int(cfg.batch_size))
    else:
      self.sampler.set_generator_variables(jax.device_get(state.ema_variables()))
    return evaluate_generator(self.sampler, self.trainer.config.data, cfg, num_images=int(cfg.hook_num_images),
                              show_progress=False)

  def __call__(self, state: GANState, step: int, writer) -> None:
    self.last = self.evaluate(state)
    scalars = flat_scores(self.last, "eval")
    writer.write_scalars(step, scalars)
    log.info("step %d eval: %s", step, {k: round(v, 4) for k, v in scalars.items()})
