"""Several trained AttnGAN runs side by side on the same captions and seeds (e.g. the lambda ablation).

    python -m attngan_jax.compare --workdir runs/attngan_shapes_l0 --workdir runs/attngan_shapes_l1 \
        --workdir runs/attngan_shapes --labels "lambda 0,lambda 1,lambda 5" \
        --captions captions.txt --seeds 0-1 --out docs/attngan_lambda_grid.png

Draws every caption with every seed from each run's EMA generator (the last stage; the same z and
conditioning-augmentation noise per seed, so columns differ only by the run) and writes one grid: a row per
caption and seed, a column per run, each cell captioned "<label>: <caption>". With --scores, each run's
`attngan_jax.evaluate` results (<workdir>/eval/attngan.json) are printed as a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np

from t2i_common.cli_args import errors_as_exit, parse_seeds


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m attngan_jax.compare", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--workdir", action="append", required=True, help="run folder of attngan_jax.train (repeat)")
  p.add_argument("--labels", default=None, help="comma-separated column labels (default: the folder names)")
  p.add_argument("--caption", action="append", default=[], help="a caption (repeat for several)")
  p.add_argument("--captions", default=None, help="text file with one caption per line")
  p.add_argument("--seeds", type=parse_seeds, default=[0], help="comma-separated seeds or ranges, e.g. 0-3")
  p.add_argument("--scores", action="store_true", help="print each run's evaluate results as a Markdown table")
  p.add_argument("--out", required=True, help="output PNG")
  return p


def _labels(args: argparse.Namespace) -> list[str]:
  if args.labels is None:
    return [os.path.basename(os.path.normpath(w)) for w in args.workdir]
  labels = [s.strip() for s in args.labels.split(",")]
  if len(labels) != len(args.workdir):
    raise ValueError(f"--labels gives {len(labels)} label(s) for {len(args.workdir)} --workdir folder(s).")
  return labels


def score_table(workdirs: Sequence[str], labels: Sequence[str]) -> str:
  """A Markdown table of the runs' evaluate results: R-precision and, where present, the shapes oracle's scores."""
  from attngan_jax.evaluate import RESULT_FILE
  rows = ["| run | N | R-precision | object_recall | all_present | held-out pair recall |",
          "|---|---|---|---|---|---|"]
  for workdir, label in zip(workdirs, labels):
    path = os.path.join(workdir, "eval", RESULT_FILE)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path!r} does not exist: run python -m attngan_jax.evaluate on {workdir!r} first.")
    with open(path) as f:
      r = json.load(f)
    oracle = r.get("oracle", {})  # shapes data only
    pct = lambda key: f"{100 * oracle[key]:.1f} %" if key in oracle else "-"
    rp = f"{100 * r['r_precision']:.1f} +- {100 * r['r_precision_std']:.1f} %" if "r_precision" in r else "-"
    rows.append(f"| {label} | {r.get('num_images', '-')} | {rp} | {pct('object_recall')} | {pct('all_present')} | "
                f"{pct('object_recall/held_out')} |")
  return "\n".join(rows)


def run(args: argparse.Namespace) -> str:
  """Writes the grid; returns its path."""
  from attngan_jax.gan.sampling import to_unit
  from attngan_jax.sample import load_sampler, read_captions
  from t2i_common.logging import CAPTIONED_MIN_SIDE, save_image_grid

  labels = _labels(args)
  captions = read_captions(args)
  table = score_table(args.workdir, labels) if args.scores else None  # before sampling: a missing file fails fast
  rows = [(c, s) for c in captions for s in args.seeds]
  columns = []
  for workdir in args.workdir:
    run_args = argparse.Namespace(workdir=workdir, generator=None, text_encoder=None, vocab=None, words_num=None,
                                  reference_mask_bug=None)
    sampler, desc = load_sampler(run_args, len(rows))
    print(f"loaded {desc}", flush=True)
    out = sampler.generate([c for c, _ in rows], [s for _, s in rows], text_seed=args.seeds[0])
    columns.append(to_unit(np.asarray(out["images"][-1])))
  sizes = {c.shape[1] for c in columns}
  if len(sizes) != 1:
    raise ValueError(f"the runs' last stages have different sizes {sorted(sizes)} px: compare runs of one size.")
  cells = [columns[j][i] for i in range(len(rows)) for j in range(len(columns))]
  texts = [f"{labels[j]}: {c} (seed {s})" for c, s in rows for j in range(len(columns))]
  save_image_grid(cells, args.out, texts, ncols=len(columns), min_side=CAPTIONED_MIN_SIDE)
  print(f"wrote {os.path.abspath(args.out)} ({len(rows)} row(s) x {len(columns)} run(s))")
  if table:
    print(table)
  return args.out


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = build_parser().parse_args(argv)
  with errors_as_exit():
    run(args)


if __name__ == "__main__":
  main(sys.argv[1:])
