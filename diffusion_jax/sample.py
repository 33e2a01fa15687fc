"""Sample images from a diffusers-format Stable Diffusion folder.

    python -m diffusion_jax.sample --pretrained path/to/sd-folder --prompt "a red cat on a bench" \\
        --seeds 0,1,2,3 --steps 50 --scheduler pndm --guidance 7.5 --out samples/

Writes one PNG per image (OUT/<prompt index>_<seed>.png) and OUT/grid.png with the prompts and seeds as
captions. --prompt may be repeated: every prompt is sampled with every seed. The first call compiles the
whole sampler (text encoder, denoising loop and VAE decode as one function); its time is reported apart.

Attend-and-Excite (diffusion_jax/attend_excite/) runs with --subjects or --token-indices:

    python -m diffusion_jax.sample --pretrained sd-folder --prompt "a cat and a frog" --subjects cat,frog \
        --seeds 0-3 --save-attention --out samples/

--subjects / --token-indices apply to every prompt, or give one list per prompt separated by ";"
("cat,frog;dog,bench"). The options after them are diffusers' / the official repo's (paper defaults).
--save-attention also samples without Attend-and-Excite on the same seeds and writes, per image,
OUT/attention_<prompt index>_<seed>.png: the smoothed map of every subject at --attention-steps over the image,
without and with Attend-and-Excite side by side, and OUT/grid_plain.png.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from t2i_common.cli_args import (comma_separated, errors_as_exit, parse_resolution, parse_seeds, parse_step_values,
                                  positive_int)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m diffusion_jax.sample", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--pretrained", required=True, help="diffusers pipeline folder (model_index.json, unet/, ...)")
  p.add_argument("--prompt", action="append", required=True, help="text prompt (repeat for several)")
  p.add_argument("--negative_prompt", default=None, help="negative prompt used for every image")
  p.add_argument("--seeds", type=parse_seeds, default=[0], help="comma-separated seeds or ranges, e.g. 0-3")
  p.add_argument("--steps", type=positive_int, default=50, help="number of inference steps")
  p.add_argument("--scheduler", default=None, help="ddim, pndm, euler, dpm++2m or ddpm (default: the folder's)")
  p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (<= 1: off)")
  p.add_argument("--height", type=positive_int, default=None, help="image height (default: the model's)")
  p.add_argument("--width", type=positive_int, default=None, help="image width (default: the model's)")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="compute dtype")
  p.add_argument("--out", required=True, help="output folder")
  ae = p.add_argument_group("Attend-and-Excite (on when --subjects or --token-indices is given)")
  ae.add_argument("--subjects", type=per_prompt_lists(str), default=None,
                  help="subject words, e.g. cat,frog (per prompt: cat,frog;dog,bench)")
  ae.add_argument("--token-indices", type=per_prompt_lists(int), default=None,
                  help="token positions instead of words, e.g. 2,5 (see Pipeline.get_indices)")
  ae.add_argument("--max-iter-to-alter", type=int, default=25, help="update the latents at loop steps below this")
  ae.add_argument("--thresholds", type=parse_step_values, default=None,
                  help="iterative-refinement steps and thresholds, step:threshold,... (default: the paper's "
                  "0:0.05,10:0.5,20:0.8 where the loop has those steps; 'none' for no refinement)")
  ae.add_argument("--scale-factor", type=float, default=20.0, help="step size scale")
  ae.add_argument("--scale-range", type=comma_separated(float, count=2), default=(1.0, 0.5),
                  help="step size range start,end")
  ae.add_argument("--attn-res", type=parse_resolution, default=(16, 16), help="attention map size, 16 or 16x16 (height x width)")
  ae.add_argument("--no-smooth", action="store_true", help="no Gaussian smoothing of the maps")
  ae.add_argument("--sigma", type=float, default=0.5, help="smoothing sigma")
  ae.add_argument("--kernel-size", type=int, default=3, help="smoothing kernel size")
  ae.add_argument("--max-refinement-steps", type=positive_int, default=20, help="iterative refinement budget")
  ae.add_argument("--sd-2-1", action="store_true", help="token softmax up to the prompt's last token")
  ae.add_argument("--gradient-chunk", type=positive_int, default=1,
                  help="images per device in one gradient pass (1: the memory of plain sampling; more: faster "
                  "where memory is to spare)")
  ae.add_argument("--save-attention", action="store_true",
                  help="also sample without Attend-and-Excite and write attention-map grids")
  ae.add_argument("--attention-steps", type=comma_separated(int), default=None,
                  help="loop steps of the attention pictures (default: first, middle and last altered step)")
  return p


def per_prompt_lists(kind):
  """"a,b" (every prompt) or "a,b;c,d" (one list per prompt) -> list, or list of lists."""
  def parse(text: str):
    groups = [[x.strip() for x in g.split(",") if x.strip()] for g in text.split(";")]
    if not all(groups):
      raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated items, ';' between prompts.")
    try:
      groups = [[kind(x) for x in g] for g in groups]
    except ValueError:
      raise argparse.ArgumentTypeError(f"{text!r}: expected {kind.__name__}s like 2,5 or 2,5;3,6.") from None
    return groups[0] if len(groups) == 1 else groups
  return parse


def run(args: argparse.Namespace) -> list[str]:
  """Samples and writes the images; returns the written paths (grid last)."""
  import diffusion_jax
  from t2i_common.logging import CAPTIONED_MIN_SIDE, save_image_grid

  attend_excite = args.subjects is not None or args.token_indices is not None
  if args.save_attention and not attend_excite:
    raise ValueError("--save-attention needs --subjects or --token-indices.")
  if not os.path.isdir(args.pretrained):
    raise SystemExit(f"--pretrained {args.pretrained!r} is not a folder; give a diffusers pipeline folder.")
  start = time.perf_counter()
  print(f"loading {args.pretrained} ({args.dtype}) ...", flush=True)
  pipe = diffusion_jax.from_pretrained(args.pretrained, dtype=args.dtype, scheduler=args.scheduler)
  print(f"loaded in {time.perf_counter() - start:.1f} s; scheduler {type(pipe.scheduler).__name__}", flush=True)
  n_prompts, seeds = len(args.prompt), args.seeds
  # Every prompt with every seed: prompt i's images are consecutive (num_images_per_prompt = len(seeds)).
  common = dict(negative_prompt=args.negative_prompt, num_inference_steps=args.steps, guidance_scale=args.guidance,
                height=args.height, width=args.width, seeds=[s for _ in args.prompt for s in seeds],
                num_images_per_prompt=len(seeds))
  ae_kwargs, steps = {}, None
  if attend_excite:
    ae_kwargs = dict(subjects=args.subjects, token_indices=args.token_indices, thresholds=args.thresholds,
                     scale_factor=args.scale_factor, scale_range=args.scale_range, attn_res=args.attn_res,
                     smooth_attentions=not args.no_smooth, sigma=args.sigma, kernel_size=args.kernel_size,
                     max_refinement_steps=args.max_refinement_steps, sd_2_1=args.sd_2_1,
                     gradient_chunk=args.gradient_chunk)
    if args.save_attention:
      last = max(0, min(args.max_iter_to_alter, args.steps) - 1)
      steps = args.attention_steps if args.attention_steps is not None else sorted({0, last // 2, last})
      ae_kwargs["attention_steps"] = steps
  what = " with Attend-and-Excite" if attend_excite else ""
  print(f"compiling and sampling {n_prompts * len(seeds)} image(s){what}, {args.steps} steps ...", flush=True)
  images = pipe(args.prompt, max_iter_to_alter=args.max_iter_to_alter, **common, **ae_kwargs)
  _report(pipe, len(images))
  if attend_excite:
    d = pipe.last_attend_excite
    print(f"Attend-and-Excite: {int(d['refinement_steps'].sum())} refinement iterations, "
          f"{int(d['skipped_updates'].sum())} skipped (non-finite) updates; final loss per image "
          f"{np.round(_last_finite(d['loss']), 3).tolist()}", flush=True)
  os.makedirs(args.out, exist_ok=True)
  paths, captions = [], []
  for k, image in enumerate(images):
    i, seed = divmod(k, len(seeds))
    path = os.path.join(args.out, f"{i:02d}_{seeds[seed]}.png")
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(path)
    paths.append(path)
    captions.append(f"{args.prompt[i]} (seed {seeds[seed]})")
  grid = os.path.join(args.out, "grid.png")
  save_image_grid(images, grid, captions=captions, ncols=len(seeds), min_side=CAPTIONED_MIN_SIDE)
  paths.append(grid)
  print(f"wrote {len(images)} image(s) to {os.path.abspath(args.out)} and the grid {os.path.abspath(grid)}")
  if args.save_attention:
    paths += _save_attention(pipe, args, images, captions, common, ae_kwargs, steps)
  return paths


def _report(pipe, n_images: int) -> None:
  t = pipe.last_timings
  evals = t["num_model_evals"]
  print(f"compile {t['compile_s']:.1f} s; sampling {t['run_s']:.2f} s ({evals / t['run_s']:.2f} steps/s, "
        f"{n_images / t['run_s']:.2f} images/s)", flush=True)


def _last_finite(loss: np.ndarray) -> np.ndarray:
  """[B, S] losses (NaN where no gradient pass ran) -> each image's last measured loss."""
  out = np.full(loss.shape[0], np.nan)
  for b, row in enumerate(loss):
    finite = row[np.isfinite(row)]
    if finite.size:
      out[b] = finite[-1]
  return out


def _save_attention(pipe, args, images, captions, common, ae_kwargs, steps) -> list[str]:
  """The same seeds without Attend-and-Excite (no updates, no refinement: plain sampling that also records the
  maps), then one picture per image with both rows."""
  from diffusion_jax.attend_excite.pictures import save_attention_grid, token_words
  from t2i_common.logging import CAPTIONED_MIN_SIDE, save_image_grid
  with_maps = pipe.last_attend_excite["attention_maps"]
  per_image = pipe.last_attend_excite["token_indices"]
  print("sampling the same seeds without Attend-and-Excite for the attention pictures ...", flush=True)
  plain = pipe(args.prompt, max_iter_to_alter=0, **common, **dict(ae_kwargs, thresholds={}))
  _report(pipe, len(plain))
  plain_maps = pipe.last_attend_excite["attention_maps"]
  paths = []
  for k, image in enumerate(images):
    i, s = divmod(k, len(args.seeds))
    words = token_words(pipe.get_indices(args.prompt[i]), per_image[k])
    path = os.path.join(args.out, f"attention_{i:02d}_{args.seeds[s]}.png")
    save_attention_grid(path, {"plain": (plain[k], plain_maps[k]), "A&E": (image, with_maps[k])}, words, steps)
    paths.append(path)
  grid = os.path.join(args.out, "grid_plain.png")
  save_image_grid(plain, grid, captions=captions, ncols=len(args.seeds), min_side=CAPTIONED_MIN_SIDE)
  paths.append(grid)
  print(f"wrote {len(paths) - 1} attention picture(s) (steps {steps}) and {os.path.abspath(grid)}")
  return paths


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = build_parser().parse_args(argv)
  with errors_as_exit():  # bad folder, options or sizes: a message, not a traceback
    run(args)


if __name__ == "__main__":
  main(sys.argv[1:])
