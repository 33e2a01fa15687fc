#!/usr/bin/env python3
"""Runs a training command on every worker of a Cloud TPU VM (pod slice or single host) through gcloud.

Usage:
  # once per TPU VM: clone the repo at a revision and install it (with jax[tpu]) on all workers
  python launch/tpu_pod.py --name my-v4-32 --zone us-central2-b --setup \\
      --git-url https://github.com/ORG/t2i-jax.git --rev main

  # train; the same command runs on every worker, which join one JAX job on their own
  python launch/tpu_pod.py --name my-v4-32 --zone us-central2-b --detach -- \\
      python -m attngan_jax.train --config configs/attngan/birds.py --workdir gs://BUCKET/attngan/birds

  # add --dry-run to print the gcloud commands instead of running them

Every worker runs `gcloud compute tpus tpu-vm ssh NAME --zone Z --worker=all --command "..."`; the trainer calls
`t2i_common.parallel.initialize_distributed`, which on a TPU VM runs `jax.distributed.initialize()` (workers
find each other through the TPU metadata). Use a gs:// workdir: every worker must see the same checkpoints.
`--detach` keeps training alive when the ssh session ends (nohup; output in ~/t2i-logs/<job>.log on each
worker). Preemption: the TPU runtime sends SIGTERM; the trainer saves at the next step and exits, and running
the same command again resumes from the latest checkpoint.
"""
from __future__ import annotations

import argparse
import shlex
import sys

from _common import env_prefix, quote, require_command, run_or_print, split_command


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--name", required=True, help="TPU VM name")
  p.add_argument("--zone", required=True, help="TPU zone, e.g. us-central2-b")
  p.add_argument("--project", default="", help="GCP project (default: gcloud's configured project)")
  p.add_argument("--repo-dir", default="~/t2i-jax", help="where the repo lives on the workers")
  p.add_argument("--setup", action="store_true", help="clone/update the repo and install it on all workers")
  p.add_argument("--git-url", default="", help="repo URL for --setup")
  p.add_argument("--rev", default="main", help="git revision for --setup")
  p.add_argument("--detach", action="store_true", help="run under nohup, log to ~/t2i-logs/<job>.log")
  p.add_argument("--job", default="train", help="job name for the --detach log file")
  p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment variables")
  p.add_argument("--dry-run", action="store_true", help="print the gcloud commands, run nothing")
  return p


def _gcloud_ssh(args: argparse.Namespace, remote: str) -> list[str]:
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, f"--zone={args.zone}"]
  if args.project:
    cmd.append(f"--project={args.project}")
  return cmd + ["--worker=all", "--command", remote]


def _repo(args: argparse.Namespace) -> str:
  # A leading ~/ must stay unquoted so the remote shell expands it.
  if args.repo_dir.startswith("~/"):
    return "~/" + shlex.quote(args.repo_dir[2:])
  return shlex.quote(args.repo_dir)


def setup_command(args: argparse.Namespace) -> str:
  repo = _repo(args)
  return (f"set -e; if [ ! -d {repo}/.git ]; then git clone {shlex.quote(args.git_url)} {repo}; fi; "
          f"cd {repo} && git fetch --all --quiet && git checkout --quiet {shlex.quote(args.rev)} && "
          f"python3 -m venv .venv && . .venv/bin/activate && pip install --quiet --upgrade pip && "
          f"pip install --quiet -e . 'jax[tpu]'")


def train_command(args: argparse.Namespace, command: list[str]) -> str:
  env = dict(kv.split("=", 1) for kv in args.env)
  inner = f"cd {_repo(args)} && . .venv/bin/activate && {env_prefix(env)}{quote(command)}"
  if not args.detach:
    return inner
  log = f"~/t2i-logs/{shlex.quote(args.job)}.log"
  return f"mkdir -p ~/t2i-logs && nohup bash -c {shlex.quote(inner)} > {log} 2>&1 &"


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  own, command = split_command(sys.argv[1:] if argv is None else argv)
  args = parser.parse_args(own)
  for kv in args.env:
    if "=" not in kv:
      parser.error(f"--env {kv!r}: expected KEY=VALUE.")
  if args.setup:
    if not args.git_url:
      parser.error("--setup needs --git-url (the repository the workers clone).")
    status = run_or_print(_gcloud_ssh(args, setup_command(args)), args.dry_run)
    if status or not command:
      return status
  require_command(parser, command)
  return run_or_print(_gcloud_ssh(args, train_command(args, command)), args.dry_run)


if __name__ == "__main__":
  sys.exit(main())
