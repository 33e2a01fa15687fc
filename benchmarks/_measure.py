"""Measuring helpers shared by the benchmark scripts: peak memory, medians, timed repeats, one side per process.

Each side of a comparison runs in its own child process (`run_child`), so a side's peak resident memory is its
own and the two sides share no allocator or thread-pool state; a child prints its figures as JSON on its last
stdout line.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Callable, Optional


def peak_rss_gib() -> float:
  """This process's peak resident memory so far, GiB.

  Linux: VmHWM of /proc/self/status, the high-water mark of this process image alone. Not ru_maxrss: Linux
  carries it over fork and exec, so a child's ru_maxrss is at least its parent's resident size when it was
  started (a parent holding 0.4 GiB of imports floors every child's figure at 0.4 GiB).
  """
  try:
    with open("/proc/self/status") as f:
      kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib / 2**20
  except (OSError, StopIteration, ValueError):
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux, bytes on macOS


def median(xs):
  """The upper median (an element of xs, no averaging of two timings)."""
  return sorted(xs)[len(xs) // 2]


def fmt(x, spec=".3f"):
  """x formatted with spec; '-' for a figure a side does not have."""
  return "-" if x is None else format(x, spec)


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
  """Wall seconds of `repeats` calls of fn (fn must block until its work is done)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def run_child(cmd: list[str], label: str, env: Optional[dict] = None) -> dict:
  """Runs `cmd` (a child measuring one side) and returns the JSON of its last stdout line; exits with the
  child's stderr tail if it fails."""
  res = subprocess.run(cmd, capture_output=True, text=True, env=env)
  if res.returncode != 0:
    raise SystemExit(f"{label} side failed:\n{res.stderr[-4000:]}")
  return json.loads(res.stdout.strip().splitlines()[-1])


def machine() -> str:
  """CPU model, cores, RAM, jax / torch versions and the current load average, for the benchmark's header."""
  import jax
  import torch
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM; jax {jax.__version__} ({jax.default_backend()}), "
          f"torch {torch.__version__}; load average {os.getloadavg()[0]:.1f}")
