"""Value types of the argparse command lines (`type=` of add_argument), and their error handling.

The samplers, evaluations and studies of both packages take the same kinds of values (seeds as "0-3,10",
positive counts, true/false switches, comma-separated numbers, attention resolutions, step:value schedules):
one parser each here, so a flag reads the same in every command. A bad value raises
argparse.ArgumentTypeError, which argparse prints after the flag's name (`argument --seeds: ...`).
"""
from __future__ import annotations

import argparse
import contextlib
import re
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")
TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")


def positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
  return value


def parse_bool(text: str) -> bool:
  """true / 1 / yes or false / 0 / no, any case."""
  low = text.strip().lower()
  if low in TRUE_WORDS:
    return True
  if low in FALSE_WORDS:
    return False
  raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


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


_ITEM_NAMES = {int: "integers", float: "numbers", positive_int: "positive integers"}


def comma_separated(item: Callable[[str], T], count: int | None = None) -> Callable[[str], list[T] | tuple[T, ...]]:
  """A parser of "a,b,c" into [item("a"), item("b"), item("c")] (int, float or positive_int items); with
  `count`, exactly that many, as a tuple."""
  what = f"{count} comma-separated {_ITEM_NAMES[item]}" if count else f"comma-separated {_ITEM_NAMES[item]}"

  def parse(text: str):
    try:
      values = [item(x) for x in text.split(",") if x.strip()]
    except (ValueError, argparse.ArgumentTypeError):
      values = None
    if not values or (count is not None and len(values) != count):
      raise argparse.ArgumentTypeError(f"{text!r}: expected {what}.")
    return tuple(values) if count else values
  return parse


def parse_resolution(text: str) -> tuple[int, int]:
  """"16" (square), "16x16" or "16,16" (height, width) -> (height, width)."""
  m = re.fullmatch(r"\s*(\d+)\s*(?:[x,]\s*(\d+)\s*)?", text)
  size = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (0, 0)
  if min(size) < 1:
    raise argparse.ArgumentTypeError(f"{text!r}: expected a size like 16, 16x16 or 16,16 (height x width).")
  return size


def parse_step_values(text: str) -> dict[int, float]:
  """"0:0.05,10:0.5" -> {0: 0.05, 10: 0.5} (a value per loop step, e.g. Attend-and-Excite's refinement
  thresholds); "" or "none" -> {}."""
  if text.strip().lower() in ("", "none"):
    return {}
  out = {}
  for part in text.split(","):
    m = re.fullmatch(r"\s*(\d+)\s*:\s*([-+0-9.eE]+)\s*", part)
    try:
      out[int(m.group(1))] = float(m.group(2))
    except (AttributeError, ValueError):  # no match, or a value like "1e" the pattern lets through
      raise argparse.ArgumentTypeError(f"{text!r}: expected step:value pairs like 0:0.05,10:0.5.") from None
  return out


@contextlib.contextmanager
def errors_as_exit(prefix: str = "error") -> Iterator[None]:
  """Bad paths, options or inputs found after parsing (ValueError, FileNotFoundError) end the command with
  "<prefix>: <message>" and exit status 1, not a traceback."""
  try:
    yield
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f"{prefix}: {e}") from None
