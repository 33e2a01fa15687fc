"""Samples test-split captions with a trained pipeline and scores the samples (shapes oracle on shapes data).

    python -m diffusion_jax.evaluate --config configs/diffusion/shapes_ldm.py --workdir runs/shapes_ldm \
        --config.model.sampling.num_images=96

Reads <workdir>/pipeline (written by `python -m diffusion_jax.train`) or --pretrained DIR. Samples the first
config.model.sampling.num_images captions of the test split (one per image, seeds sampling.seed, +1, ...) with
sampling.steps steps of the folder's scheduler and guidance sampling.guidance_scale, writes the captioned grid
to <workdir>/samples/eval.png and, on shapes data, the oracle's scores (object recall = the fraction of the
captions' objects found with the right colour and shape, colour recall, shape recall, ...) as JSON to
<workdir>/eval/samples.json. The same sampler and scores as the training-time sample grids.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import ml_collections

from t2i_common.logging import setup_cli_logging, write_eval_json


def evaluate(config: ml_collections.ConfigDict, workdir: str, *, pretrained: Optional[str] = None) -> dict[str, Any]:
  """Samples and scores as the module docstring says; returns the scores (and "path" of the JSON)."""
  from diffusion_jax.pipeline import from_pretrained
  from diffusion_jax.training.ldm_trainer import SampleHook

  folder = pretrained or os.path.join(workdir, "pipeline")
  if not os.path.isfile(os.path.join(folder, "model_index.json")):
    raise FileNotFoundError(f"{folder!r} is not a pipeline folder (no model_index.json): train with "
                            "python -m diffusion_jax.train first, or pass --pretrained DIR.")
  s = config.model.sampling
  hook = SampleHook(config, workdir, every_steps=1)
  result: dict[str, Any] = {
      "pipeline": folder, "dataset": config.data.name, "num_images": len(hook.captions), "steps": int(s.steps),
      "guidance_scale": float(s.guidance_scale), "seed": int(s.seed),
      **{k.removeprefix("sample/"): v for k, v in hook.sample_and_score(from_pretrained(folder), "eval").items()}}
  return write_eval_json(workdir, "samples.json", result)


def main(argv) -> None:
  del argv
  from absl import flags
  setup_cli_logging()
  f = flags.FLAGS
  print(json.dumps(evaluate(f.config, f.workdir, pretrained=f.pretrained)))


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "LDM config file (path.py[:variant]).", lock_config=True)
  flags.DEFINE_string("workdir", None, "Run folder of diffusion_jax.train (holds pipeline/); outputs go here.")
  flags.DEFINE_string("pretrained", None, "Pipeline folder to evaluate instead of <workdir>/pipeline.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
