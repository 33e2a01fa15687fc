"""Images and attention pictures from captions with a trained AttnGAN generator.

    python -m attngan_jax.sample --workdir runs/attngan_shapes --caption "a red circle and a blue square" \
        --seeds 0-3 --out samples/
    python -m attngan_jax.sample --generator netG_epoch_600.pth --text_encoder weights/text_encoder \
        --vocab birds/captions.pickle --caption "this bird is red with black wings" --seeds 0-7 --out samples/

The generator: --workdir W (the EMA generator attngan_jax.train exported to W/generator, with the DAMSM text
encoder it was trained with), or --generator (the reference's netG_*.pth, or a directory from
`python -m attngan_jax.convert_torch --kind generator`) with --text_encoder (a converted text encoder directory;
its vocab.json, or --vocab = the reference's captions.pickle). The reference's released generators were trained
with its attention-mask tiling, so for them the reference mask is the default (--reference_mask_bug=false
switches it off); runs of attngan_jax.train use the mode they were trained with.

--caption may be repeated; --captions FILE adds one caption per line. Every caption is drawn with every seed
(z and the conditioning-augmentation noise from the seed). Captions longer than --words_num words keep an
in-order random subset of that many words (the reference's data handling), drawn from the first seed.
Writes to OUT: images/<caption>_<seed>_<size>px.png for every stage, grid.png (one row per caption and seed,
one column per stage, captioned) and attention.png (the paper's attention figure: for each attention stage the
top-5 words by summed attention after Eq. 15's suppression, maps Gaussian-upsampled over the image).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from t2i_common.cli_args import errors_as_exit, parse_bool, parse_seeds, positive_int


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m attngan_jax.sample", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--workdir", default=None, help="run folder of attngan_jax.train (uses <workdir>/generator)")
  p.add_argument("--generator", default=None, help="netG_*.pth or a converted / exported generator directory")
  p.add_argument("--text_encoder", default=None, help="converted DAMSM text encoder directory (with --generator)")
  p.add_argument("--vocab", default=None, help="captions.pickle or vocab.json (default: beside the text encoder)")
  p.add_argument("--words_num", type=positive_int, default=None, help="caption length (default: the run's, else 18)")
  p.add_argument("--reference_mask_bug", type=parse_bool, default=None,
                 help="reference attention-mask tiling (default: the run's; true for reference generators)")
  p.add_argument("--caption", action="append", default=[], help="a caption (repeat for several)")
  p.add_argument("--captions", default=None, help="text file with one caption per line")
  p.add_argument("--seeds", type=parse_seeds, default=[0], help="comma-separated seeds or ranges, e.g. 0-3")
  p.add_argument("--top_k", type=positive_int, default=5, help="words per attention stage in attention.png")
  p.add_argument("--out", required=True, help="output folder")
  return p


def read_captions(args: argparse.Namespace) -> list[str]:
  captions = list(args.caption)
  if args.captions:
    if not os.path.isfile(args.captions):
      raise FileNotFoundError(f"--captions {args.captions!r} does not exist.")
    with open(args.captions, encoding="utf-8") as f:
      captions += [line.strip() for line in f if line.strip()]
  if not captions:
    raise ValueError("no captions: give --caption TEXT (repeatable) or --captions FILE.")
  return captions


def load_sampler(args: argparse.Namespace, num_images: int = 16):
  """(Sampler, description) for --workdir or --generator + --text_encoder; batches of at most 16 images."""
  from attngan_jax import convert_torch
  from attngan_jax.gan.config import gan_model_config
  from attngan_jax.gan.damsm import FrozenDAMSM
  from attngan_jax.gan.sampling import Sampler
  from attngan_jax.gan.torch_weights import GENERATOR_KEYS, generator_architecture
  from attngan_jax.gan.trainer import GENERATOR_DIR, load_exported_generator
  from t2i_common.weights import read_state_dict

  if bool(args.workdir) == bool(args.generator):
    raise ValueError("give either --workdir (a run of attngan_jax.train) or --generator (with --text_encoder).")
  if args.workdir:
    path = os.path.join(args.workdir, GENERATOR_DIR)
    gen, variables, saved = load_exported_generator(path)
    if args.reference_mask_bug is not None and args.reference_mask_bug != gen.reference_mask_bug:
      gen = gen.clone(reference_mask_bug=args.reference_mask_bug)
    dirs = saved.get("damsm", {})
    text_dir = args.text_encoder or dirs.get("text_encoder")
    vocab = args.vocab or dirs.get("vocab_file") or ""
    words_num = args.words_num or int(saved.get("words_num", 18))
    what = f"{path} (step {saved.get('step')})"
  else:
    if not args.text_encoder:
      raise ValueError("--generator needs --text_encoder (a converted DAMSM text encoder directory: python -m "
                       "attngan_jax.convert_torch --kind text_encoder --src text_encoder200.pth --out DIR "
                       "--captions captions.pickle).")
    if os.path.isdir(args.generator):  # convert_torch's directory: the architecture is in its config.json
      with open(os.path.join(args.generator, convert_torch.CONFIG_FILE)) as f:
        arch = json.load(f)
    else:
      arch = generator_architecture(read_state_dict(args.generator))
    bug = True if args.reference_mask_bug is None else args.reference_mask_bug
    words_num = args.words_num or 18
    model = gan_model_config(**{k: arch[k] for k in GENERATOR_KEYS if arch.get(k) is not None},
                             reference_mask_bug=bug, words_num=words_num)
    gen, variables = convert_torch.load_generator(args.generator, model)
    text_dir, vocab = args.text_encoder, args.vocab or ""
    what = args.generator
  if not text_dir:
    raise ValueError(f"{what} records no DAMSM text encoder: pass --text_encoder DIR.")
  damsm = FrozenDAMSM.from_dirs(text_dir, None, vocab)
  if damsm.embedding_dim != gen.embedding_dim:
    raise ValueError(f"the text encoder in {text_dir!r} gives {damsm.embedding_dim}-d features but the generator "
                     f"takes {gen.embedding_dim}-d: use the DAMSM the generator was trained with.")
  desc = (f"{what}: {len(gen.image_sizes)} stage(s) {gen.image_sizes} px, reference mask "
          f"{'on' if gen.reference_mask_bug else 'off'}; text encoder {text_dir} ({len(damsm.vocab)} words), "
          f"words_num {words_num}")
  return Sampler(gen, variables, damsm, words_num, batch_size=min(16, num_images)), desc


def _slug(text: str, n: int = 40) -> str:
  return "".join(c if c.isalnum() else "_" for c in text.lower())[:n].strip("_") or "caption"


def run(args: argparse.Namespace) -> dict[str, str]:
  """Generates and writes everything; returns {"grid", "attention" (with >= 2 stages), "images"} paths."""
  from attngan_jax.gan.sampling import attention_figure, stage_grid, to_unit
  from attngan_jax.text import tokenize
  from t2i_common.logging import to_uint8

  captions = read_captions(args)
  rows = [(c, s) for c in captions for s in args.seeds]
  start = time.perf_counter()
  sampler, desc = load_sampler(args, len(rows))
  print(f"loaded {desc} in {time.perf_counter() - start:.1f} s", flush=True)
  enc = sampler.encode_captions(captions, seed=args.seeds[0])
  for c in captions:
    total = len(sampler.damsm.vocab.encode(tokenize(c))[0])
    if total > sampler.words_num:
      print(f"note: {c!r} has {total} known words; {sampler.words_num} kept in order (words_num).", flush=True)
  index = np.repeat(np.arange(len(captions)), len(args.seeds))
  start = time.perf_counter()
  out = sampler.generate_tokens(enc["tokens"][index], enc["length"][index], [s for _, s in rows])
  print(f"generated {len(rows)} image(s) in {time.perf_counter() - start:.1f} s (including compilation)", flush=True)
  os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
  written = []
  for k, (caption, seed) in enumerate(rows):
    for images in out["images"]:
      path = os.path.join(args.out, "images", f"{index[k]:02d}_{_slug(caption)}_{seed}_{images.shape[1]}px.png")
      Image.fromarray(to_uint8(to_unit(images[k]))).save(path)
      written.append(path)
  labels = [f"{c} (seed {s})" for c, s in rows]
  paths = {"images": os.path.join(args.out, "images")}
  paths["grid"] = os.path.join(args.out, "grid.png")
  Image.fromarray(stage_grid(out["images"], labels)).save(paths["grid"])
  if out["maps"]:
    words = [sampler.words(enc["tokens"][index[k]], enc["length"][index[k]]) for k in range(len(rows))]
    paths["attention"] = os.path.join(args.out, "attention.png")
    Image.fromarray(attention_figure(out["images"], out["maps"], words, k=args.top_k)).save(paths["attention"])
  print(f"wrote {len(written)} image(s) to {os.path.abspath(paths['images'])}, the grid "
        f"{os.path.abspath(paths['grid'])}" + (f" and the attention figure {os.path.abspath(paths['attention'])}"
                                               if "attention" in paths else " (one stage: no attention figure)"))
  return paths


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = build_parser().parse_args(argv)
  with errors_as_exit():  # bad paths, captions or options: a message, not a traceback
    run(args)


if __name__ == "__main__":
  main(sys.argv[1:])
