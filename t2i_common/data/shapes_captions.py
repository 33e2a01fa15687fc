"""Captions for `shapes` scenes, from templates that use attributes and true spatial relations.

Every caption mentions every object of its scene ("a small red circle to the left of a blue star"), so a
caption fully names the object set. Relations are read from the scene's boxes and only used when they hold
with a margin; `parse_caption` reads captions back (tests check them against the scene, and the oracle's CLI
uses it to score images generated from captions alone). Style "templates" varies the wording; style "plain"
lists the objects only, in a random order ("a red circle and a blue square", the form of Attend-and-Excite's
benchmark prompts); style "shapes_only" names the shapes alone ("a circle and a star": one noun per object, as the
paper's animal prompts; the colours are the model's to choose, and `parse_caption` gives them as None).
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from t2i_common.data.shapes_render import COLOR_NAMES, SHAPES, SIZES

CAPTION_STYLES = ("templates", "plain", "shapes_only")
RELATIONS = ("to the left of", "to the right of", "above", "below")
# A relation is stated only when the boxes are apart by this fraction of the image side along its axis, which
# keeps it true after boxes are rounded to whole pixels (>= 1 px at 32 px).
RELATION_MARGIN = 0.04
_COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}


def _article(word: str) -> str:
  return "an" if word[0] in "aeiou" else "a"


def object_phrase(obj: dict, with_size: bool, definite: bool = False, with_color: bool = True) -> str:
  """'a small red circle', 'an orange star', 'the red circle' (a second mention) or 'a star' (no colour)."""
  words = ([obj["size"]] if with_size else []) + ([obj["color"]] if with_color else []) + [obj["shape"]]
  det = "the" if definite else _article(words[0])
  return " ".join([det] + words)


def relation(a: dict, b: dict) -> str | None:
  """The relation phrase that makes 'a <rel> b' true for boxes in unit coordinates, or None.

  Among the axes along which the boxes are clearly apart, the one with the larger centre offset wins, so the
  phrase also reads naturally.
  """
  ax0, ay0, ax1, ay1 = a["box"]
  bx0, by0, bx1, by1 = b["box"]
  options = []
  for gap, centre_offset, phrase in (
      (bx0 - ax1, (bx0 + bx1 - ax0 - ax1) / 2, "to the left of"),
      (ax0 - bx1, (ax0 + ax1 - bx0 - bx1) / 2, "to the right of"),
      (by0 - ay1, (by0 + by1 - ay0 - ay1) / 2, "above"),
      (ay0 - by1, (ay0 + ay1 - by0 - by1) / 2, "below")):
    if gap >= RELATION_MARGIN:
      options.append((centre_offset, phrase))
  return max(options)[1] if options else None


def region(obj: dict) -> str | None:
  """Where the object's centre lies in a 3x3 grid ('in the top left', 'on the left', 'in the center'), or
  None when it is too close to a grid line to say.
  """
  x0, y0, x1, y1 = obj["box"]
  cells = []
  for c in ((x0 + x1) / 2, (y0 + y1) / 2):
    cell = int(c * 3)
    if abs(c * 3 - round(c * 3)) < 0.15:  # within 0.05 of a third: ambiguous
      return None
    cells.append(min(max(cell, 0), 2))
  horizontal, vertical = ("left", "center", "right")[cells[0]], ("top", "middle", "bottom")[cells[1]]
  if vertical == "middle":
    return "in the center" if horizontal == "center" else f"on the {horizontal}"
  if horizontal == "center":
    return f"at the {vertical}"
  return f"in the {vertical} {horizontal}"


def _join(phrases: Sequence[str]) -> str:
  if len(phrases) == 1:
    return phrases[0]
  return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _relation_clause(objs: Sequence[dict], rng: np.random.Generator, sized, copula: str = "") -> str | None:
  """'A <rel> B' for two objects, 'A <rel> B, and C <rel> the B' for three (B is the shared anchor)."""
  order = list(rng.permutation(len(objs)))
  if len(objs) == 2:
    a, b = (objs[i] for i in order)
    rel = relation(a, b)
    return None if rel is None else f"{object_phrase(a, sized())} {copula}{rel} {object_phrase(b, sized())}"
  a, b, c = (objs[i] for i in order)
  rel_ab, rel_cb = relation(a, b), relation(c, b)
  if rel_ab is None or rel_cb is None:
    return None
  return (f"{object_phrase(a, sized())} {copula}{rel_ab} {object_phrase(b, sized())}, and "
          f"{object_phrase(c, sized())} {copula}{rel_cb} {object_phrase(b, False, definite=True)}")


def _templates(objs: Sequence[dict], background: str, rng: np.random.Generator) -> list:
  """Caption builders usable for this scene; each returns a caption or None when it cannot be made true."""
  n = len(objs)

  def sized() -> bool:
    return bool(rng.random() < 0.6)

  def listing() -> str:
    return _join([object_phrase(objs[i], sized()) for i in rng.permutation(n)])

  builders = [
      lambda: listing(),
      lambda: f"an image of {listing()}",
      lambda: f"a picture with {listing()} on a {background} background",
      lambda: f"there is {listing()}",
      lambda: f"a {background} background with {listing()}",
      lambda: (f"{_COUNT_WORDS[n]} shapes: {listing()}" if n > 1 else f"a single shape: {listing()}"),
  ]
  if n == 1:
    where = region(objs[0])
    if where is not None:
      builders += [
          lambda: f"{object_phrase(objs[0], sized())} {where}",
          lambda: f"there is {object_phrase(objs[0], sized())} {where} of the image",
      ]
  elif n <= 3:
    builders += [
        lambda: _relation_clause(objs, rng, sized),
        lambda: _maybe(_relation_clause(objs, rng, sized), "there is {}"),
        lambda: _relation_clause(objs, rng, sized, copula="is "),
        lambda: _maybe(_relation_clause(objs, rng, sized), f"{_COUNT_WORDS[n]} shapes: {{}}"),
    ]
  return builders


def _maybe(text: str | None, fmt: str) -> str | None:
  return None if text is None else fmt.format(text)


def make_captions(objs: Sequence[dict], background: str, count: int, rng: np.random.Generator,
                  style: str = "templates") -> list[str]:
  """`count` captions for objects with unit-square boxes: distinct templates while there are enough (style
  "templates"), or the objects' colour and shape only (style "plain") or their shape only ("shapes_only"), each
  caption in its own random order.
  """
  if style not in CAPTION_STYLES:
    raise ValueError(f"unknown caption style {style!r}; use one of {CAPTION_STYLES}.")
  if style != "templates":
    with_color = style == "plain"
    return [_join([object_phrase(objs[i], False, with_color=with_color) for i in rng.permutation(len(objs))])
            for _ in range(count)]
  builders = _templates(objs, background, rng)
  captions: list[str] = []
  order = list(rng.permutation(len(builders)))
  while len(captions) < count:
    if not order:
      order = list(rng.permutation(len(builders)))
    text = builders[order.pop()]()
    if text is not None:
      captions.append(text)
  return captions


_MENTION = re.compile(
    r"\b(a|an|the) (?:(" + "|".join(SIZES) + r") )?(?:(" + "|".join(COLOR_NAMES) + r") )?(" + "|".join(SHAPES)
    + r")\b")
_RELATION = re.compile("|".join(re.escape(r) for r in RELATIONS))
_COUNT = re.compile(r"\b(one|two|three|four|five) shapes\b|\ba single shape\b")
_BACKGROUND = re.compile(r"\b(dark|gray|light) background\b")
_REGION = re.compile(r"\b(?:in|on|at) the (top left|top right|bottom left|bottom right|left|right|top|bottom|"
                     r"center)\b")


def parse_caption(text: str) -> dict:
  """Reads a caption back: {"objects": [{"color" (None if not named), "shape", "size" or None}], "relations":
  [(i, phrase, j)] over indices into "objects", "count": int or None, "background": str or None, "region": str or
  None}.

  Repeated mentions of the same (color, shape) ('the blue star') map to one object (so 'a star and a star' of
  style "shapes_only" reads as one star).
  """
  objects: list[dict] = []
  index_of: dict[tuple[str, str], int] = {}
  mention_ids, spans = [], []
  for m in _MENTION.finditer(text):
    key = (m.group(3), m.group(4))
    if key not in index_of:
      index_of[key] = len(objects)
      objects.append({"color": key[0], "shape": key[1], "size": m.group(2)})
    elif m.group(2) and not objects[index_of[key]]["size"]:
      objects[index_of[key]]["size"] = m.group(2)
    mention_ids.append(index_of[key])
    spans.append(m.span())
  relations = []
  for k in range(len(spans) - 1):
    between = text[spans[k][1]:spans[k + 1][0]]
    rel = _RELATION.search(between)
    if rel:
      relations.append((mention_ids[k], rel.group(0), mention_ids[k + 1]))
  count = _COUNT.search(text)
  background = _BACKGROUND.search(text)
  where = _REGION.search(text[spans[-1][1]:]) if spans else None
  return {
      "objects": objects,
      "relations": relations,
      "count": None if not count else ({v: k for k, v in _COUNT_WORDS.items()}.get(count.group(1), 1)),
      "background": background.group(1) if background else None,
      "region": where.group(0) if where else None,
  }
