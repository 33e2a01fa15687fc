"""Samples test-split captions with a trained pipeline and scores the samples (shapes oracle on shapes data).

    python -m diffusion_jax.evaluate --config configs/diffusion/shapes_ldm.py --workdir runs/shapes_ldm \
        --config.model.sampling.num_images=96

Reads <workdir>/pipeline (written by `python -m diffusion_jax.train`) or --pretrained DIR. Samples the first
config.model.sampling.num_images captions of the test split (one per image, seeds sampling.seed, +1, ...) with
sampling.steps steps of the folder's scheduler and guidance sampling.guidance_scale, writes the captioned grid
to <workdir>/samples/eval.png and, on shapes data, the oracle's scores (object recall = the fraction of the
captions' objects found with the right colour and shape, colour recall, shape recall, the object recall per
shape and split between the colour-shape pairs seen in training and those held out of it, data.shapes.holdout)
as JSON to <workdir>/eval/samples.json. The same sampler and scores as the training-time sample grids.

--restore_from=0,200,400,600 (shapes data) adds where in the noise range the model loses the objects: the test
images' VAE latents are noised to the first DDIM timestep at or below each t (of sampling.steps; "from_timestep")
and denoised with their captions by the remaining steps (guidance as above), and the oracle scores the results
("restoration" in the JSON, grids restore_<t>.png; t = 0 scores the VAE's own reconstructions).
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

import ml_collections

from t2i_common.entry_point import run_config_command
from t2i_common.logging import write_eval_json


def evaluate(config: ml_collections.ConfigDict, workdir: str, *, pretrained: Optional[str] = None,
             restore_from: Sequence[int] = ()) -> dict[str, Any]:
  """Samples and scores as the module docstring says; returns the scores (and "path" of the JSON)."""
  from diffusion_jax.pipeline import from_pretrained
  from diffusion_jax.training.ldm_trainer import SampleHook

  folder = pretrained or os.path.join(workdir, "pipeline")
  if not os.path.isfile(os.path.join(folder, "model_index.json")):
    raise FileNotFoundError(f"{folder!r} is not a pipeline folder (no model_index.json): train with "
                            "python -m diffusion_jax.train first, or pass --pretrained DIR.")
  s = config.model.sampling
  hook = SampleHook(config, workdir, every_steps=1)
  pipe = from_pretrained(folder)
  restore_from = [int(t) for t in restore_from]
  if restore_from:  # checked before sampling, which takes minutes
    if hook.objects is None:
      raise ValueError("--restore_from needs the shapes oracle: evaluate a model trained on shapes data.")
    total = pipe.scheduler.config["num_train_timesteps"]
    bad = [t for t in restore_from if not 0 <= t < total]
    if bad:
      raise ValueError(f"restore_from timesteps {bad} are outside [0, {total}).")
  result: dict[str, Any] = {
      "pipeline": folder, "dataset": config.data.name, "num_images": len(hook.captions), "steps": int(s.steps),
      "guidance_scale": float(s.guidance_scale), "seed": int(s.seed),
      **{k.removeprefix("sample/"): v for k, v in hook.sample_and_score(pipe, "eval").items()}}
  if restore_from:
    result["restoration"] = restoration_scores(pipe, hook, restore_from)
  return write_eval_json(workdir, "samples.json", result)


def restoration_scores(pipe: Any, hook: Any, timesteps: Sequence[int]) -> dict[int, dict[str, float]]:
  """Oracle scores of the hook's test images noised to each timestep and denoised with their captions (DDIM)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from t2i_common.data.shapes_oracle import score
  from t2i_common.logging import save_image_grid, to_uint8

  s = hook.config.model.sampling
  pipe = pipe.with_scheduler("ddim")
  sched, params = pipe.scheduler, pipe.params
  # The images, captions and sampler are the same for every timestep: encode them once.
  z0 = pipe.encode(params, jnp.asarray(hook.images, jnp.float32))
  noise = jax.random.normal(jax.random.key(s.seed), z0.shape, z0.dtype)
  cond = pipe.encode_text(params, jnp.asarray(pipe.tokenize(hook.captions)))
  uncond = (pipe.encode_text(params, jnp.asarray(pipe.tokenize([""] * len(hook.captions))))
            if s.guidance_scale > 1.0 else None)  # as the pipeline: no guidance at scale <= 1
  denoise = jax.jit(lambda p, x, c, u, st: pipe.denoise(p, x, c, u, st, guidance_scale=s.guidance_scale))
  full = sched.set_timesteps(int(s.steps), z0.shape)
  results = {}
  for t in timesteps:
    start = int(np.searchsorted(-np.asarray(full.timesteps), -t))  # first step at or below t (they descend)
    if t == 0 or start == full.num_steps:
      latents, from_timestep = z0, 0
    else:
      state = full.replace(timesteps=full.timesteps[start:], tables={k: v[start:] for k, v in full.tables.items()})
      from_timestep = int(state.timesteps[0])
      noisy = sched.add_noise(z0, noise, jnp.full((z0.shape[0],), from_timestep))
      latents = denoise(params, noisy, cond, uncond, state)
    uint8 = to_uint8(np.asarray(pipe.decode(params, latents)))
    save_image_grid(uint8, os.path.join(hook.out_dir, f"restore_{t}.png"), captions=hook.captions)
    results[t] = {"from_timestep": from_timestep, **score(list(uint8), hook.objects, holdout=hook.holdout)}
  return results


def main(args) -> None:
  print(json.dumps(evaluate(args.config, args.workdir, pretrained=args.pretrained,
                            restore_from=args.restore_from or ())))


if __name__ == "__main__":
  from absl import flags
  flags.DEFINE_string("pretrained", None, "Pipeline folder to evaluate instead of <workdir>/pipeline.")
  flags.DEFINE_list("restore_from", [], "Timesteps to noise the test images' latents to and denoise from "
                    "(shapes data), e.g. 0,200,400,600; see the module docstring.")
  run_config_command(main, config_kind="LDM",
                     workdir_help="Run folder of diffusion_jax.train (holds pipeline/); outputs go here.")
