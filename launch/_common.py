"""What the launch scripts share: splitting off the training command after `--`, quoting, dry runs.

Standard library only: the launchers run on a laptop or a login node without JAX installed.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from typing import Mapping, Sequence


def split_command(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Splits `launcher options -- training command` into the two lists."""
  argv = list(argv)
  if "--" not in argv:
    return argv, []
  i = argv.index("--")
  return argv[:i], argv[i + 1:]


def require_command(parser: argparse.ArgumentParser, command: Sequence[str]) -> None:
  if not command:
    parser.error("no training command: put it after `--`, e.g. "
                 "`-- python -m attngan_jax.train --config configs/attngan/birds.py --workdir /path/run1`.")


def quote(command: Sequence[str]) -> str:
  return " ".join(shlex.quote(c) for c in command)


def env_prefix(env: Mapping[str, str]) -> str:
  """`export A=1 B=2; ` (shell syntax for remote commands and batch scripts)."""
  if not env:
    return ""
  return "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + "; "


def run_or_print(command: Sequence[str], dry_run: bool, env: Mapping[str, str] | None = None,
                 replace_process: bool = False) -> int:
  """Prints the command (dry run) or runs it; returns its exit status."""
  shown = (" ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items()) + " " if env else "") + quote(command)
  if dry_run:
    print(shown)
    return 0
  print(f"+ {shown}", file=sys.stderr, flush=True)
  full_env = {**os.environ, **(env or {})}
  if replace_process:  # the launcher steps aside: signals (SIGTERM on preemption) go straight to the trainer
    os.execvpe(command[0], list(command), full_env)
  return subprocess.call(list(command), env=full_env)
