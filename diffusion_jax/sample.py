"""Sample images from a diffusers-format Stable Diffusion folder.

    python -m diffusion_jax.sample --pretrained path/to/sd-folder --prompt "a red cat on a bench" \\
        --seeds 0,1,2,3 --steps 50 --scheduler pndm --guidance 7.5 --out samples/

Writes one PNG per image (OUT/<prompt index>_<seed>.png) and OUT/grid.png with the prompts and seeds as
captions. --prompt may be repeated: every prompt is sampled with every seed. The first call compiles the
whole sampler (text encoder, denoising loop and VAE decode as one function); its time is reported apart.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from typing import Optional, Sequence

import numpy as np
from PIL import Image


def parse_seeds(text: str) -> list[int]:
  """"0,1,2" or a range "0-7" (or a mix, "0-3,10") -> list of ints."""
  seeds = []
  for part in text.split(","):
    part = part.strip()
    if not part:
      continue
    m = re.fullmatch(r"(\d+)-(\d+)", part)
    try:
      seeds += list(range(int(m.group(1)), int(m.group(2)) + 1)) if m else [int(part)]
    except ValueError:
      raise argparse.ArgumentTypeError(f"--seeds {text!r}: expected integers like 0,1,2 or a range 0-7.") from None
  if not seeds:
    raise argparse.ArgumentTypeError("--seeds is empty.")
  return seeds


def positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
  return value


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
  return p


def run(args: argparse.Namespace) -> list[str]:
  """Samples and writes the images; returns the written paths (grid last)."""
  import diffusion_jax
  from t2i_common.logging import CAPTIONED_MIN_SIDE, save_image_grid

  if not os.path.isdir(args.pretrained):
    raise SystemExit(f"--pretrained {args.pretrained!r} is not a folder; give a diffusers pipeline folder.")
  start = time.perf_counter()
  print(f"loading {args.pretrained} ({args.dtype}) ...", flush=True)
  pipe = diffusion_jax.from_pretrained(args.pretrained, dtype=args.dtype, scheduler=args.scheduler)
  print(f"loaded in {time.perf_counter() - start:.1f} s; scheduler {type(pipe.scheduler).__name__}", flush=True)
  n_prompts, seeds = len(args.prompt), args.seeds
  # Every prompt with every seed: prompt i's images are consecutive (num_images_per_prompt = len(seeds)).
  print(f"compiling and sampling {n_prompts * len(seeds)} image(s), {args.steps} steps ...", flush=True)
  images = pipe(args.prompt, negative_prompt=args.negative_prompt, num_inference_steps=args.steps,
                guidance_scale=args.guidance, height=args.height, width=args.width,
                seeds=[s for _ in args.prompt for s in seeds], num_images_per_prompt=len(seeds))
  t = pipe.last_timings
  evals = t["num_model_evals"]
  print(f"compile {t['compile_s']:.1f} s; sampling {t['run_s']:.2f} s ({evals / t['run_s']:.2f} steps/s, "
        f"{len(images) / t['run_s']:.2f} images/s)", flush=True)
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
  return paths


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = build_parser().parse_args(argv)
  try:
    run(args)
  except (ValueError, FileNotFoundError) as e:  # bad folder, options or sizes: a message, not a traceback
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  main(sys.argv[1:])
