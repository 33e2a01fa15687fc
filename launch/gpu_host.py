#!/usr/bin/env python3
"""Runs a training command on one GPU host: a single JAX process driving all (or the chosen) local GPUs.

Usage:
  python launch/gpu_host.py [--gpus 0,1,2,3] [--mem-fraction 0.9] [--dry-run] -- \\
      python -m diffusion_jax.train --config configs/diffusion/shapes.py --workdir /data/runs/ldm_shapes

One process sees every selected GPU as a local device; the mesh (config.mesh) spreads the batch (and with
fsdp > 1 the parameters) over them, so nothing else is needed for one host. The launcher sets
CUDA_VISIBLE_DEVICES (--gpus), XLA_PYTHON_CLIENT_MEM_FRACTION (share of GPU memory JAX preallocates) and
optional extra XLA_FLAGS, then replaces itself with the trainer, so Ctrl-C or `kill -TERM` reaches the trainer
directly (SIGTERM: save at the next step and exit). Running the same command again resumes from the workdir.
--dry-run prints the environment and command instead.
"""
from __future__ import annotations

import argparse
import os
import sys

from _common import require_command, run_or_print, split_command


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--gpus", default="", help="comma-separated GPU ids (default: all visible)")
  p.add_argument("--mem-fraction", type=float, default=0.9, help="XLA_PYTHON_CLIENT_MEM_FRACTION")
  p.add_argument("--xla-flags", default="", help="extra XLA_FLAGS, appended to the current ones")
  p.add_argument("--dry-run", action="store_true", help="print what would run")
  return p


def environment(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, str]:
  env = {}
  if args.gpus:
    ids = [g.strip() for g in args.gpus.split(",") if g.strip()]
    if not all(g.isdigit() for g in ids):
      parser.error(f"--gpus {args.gpus!r}: expected comma-separated integers, e.g. 0,1,2,3.")
    env["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
  if not 0.0 < args.mem_fraction <= 1.0:
    parser.error(f"--mem-fraction {args.mem_fraction}: must be in (0, 1].")
  env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{args.mem_fraction:g}"
  if args.xla_flags:
    env["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
  return env


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  own, command = split_command(sys.argv[1:] if argv is None else argv)
  args = parser.parse_args(own)
  require_command(parser, command)
  return run_or_print(command, args.dry_run, env=environment(args, parser), replace_process=True)


if __name__ == "__main__":
  sys.exit(main())
