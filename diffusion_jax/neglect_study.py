"""Catastrophic neglect on two-object shapes captions, with and without Attend-and-Excite, scored by the oracle.

    python -m diffusion_jax.neglect_study --pretrained runs/shapes_ldm_pairs/pipeline --num-captions 96 \\
        --seeds 0 --out runs/neglect_study

Takes --num-captions two-object scenes of the shapes test split from scene --caption-offset on (plain captions,
"a red circle and a blue square"; the scenes with a held-out colour-shape pair, data.shapes.holdout, are scored
apart), samples each caption with every seed once plainly and once with Attend-and-Excite on the two shape words
(the same initial noise), and scores both with the shapes oracle (t2i_common/data/shapes_oracle.py). Per arm:
- all_present: both captioned objects found with their colour and shape; neglect: exactly one of the two;
  none: neither; object_recall: the fraction of the objects found;
- both_shapes: both shape words drawn, whatever the colours; binding: of those images, the fraction whose two
  shapes also carry their own captioned colours (all_present / both_shapes: colour leaking or swapping lowers it);
  both_colours: both colours on recognised shapes, whatever the shapes (an object left out entirely lowers it);
- the oracle's own scores (object_precision, colour and shape recall, recall per shape, seen / held-out pairs);
- time per image (the sampler's run time, compilation apart) and, with Attend-and-Excite, its diagnostics;
- against plain sampling on the same seeds: rescued (plain not all_present, Attend-and-Excite all_present) and
  lost (the reverse);
- Attend-and-Excite's premise on this model (`attention_premise`): in the plain images that show one of their two
  objects, how often the missing object's word is the less attended one at step 0 (the update raises the least
  attended word: about 50 % means it pushes the wrong word as often as the right one).
Several --scale-factor / --max-iter-to-alter / --subject-words values give one Attend-and-Excite arm each (a
sweep); every arm shares the plain arm's seeds. --subject-words colour excites the colour words instead of the
shape words (on the shapes model they hold the cross-attention; docs/neglect_study.md), "both" all four.
Writes OUT/study.json, OUT/study.md (a Markdown table), OUT/grid.png (for the first --grid-captions captions: plain
and each arm side by side, the oracle's count of found objects in the labels) and OUT/attention_<k>.png for the
first --attention-images images (each subject word's cross-attention map at three steps over the image, plainly
and with the first Attend-and-Excite arm's settings and words; attend_excite/pictures.py).
Thresholds and max_iter_to_alter default to the paper's ({0: 0.05, 10: 0.5, 20: 0.8}, 25 of 50 steps) scaled
to --steps.
"""
from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import time
import warnings
from typing import Any, Optional, Sequence

import numpy as np

from t2i_common.cli_args import (comma_separated, errors_as_exit, parse_resolution, parse_seeds, parse_step_values,
                                  positive_int)

# The paper's schedule for 50 steps; scaled to the number of steps sampled (see `default_schedule`).
PAPER_STEPS = 50
PAPER_THRESHOLDS = {0: 0.05, 10: 0.5, 20: 0.8}
PAPER_MAX_ITER_TO_ALTER = 25


def default_schedule(num_steps: int) -> tuple[dict[int, float], int]:
  """The paper's thresholds and max_iter_to_alter for 50 steps, moved to the same fractions of `num_steps`."""
  scale = num_steps / PAPER_STEPS
  thresholds = {int(round(i * scale)): v for i, v in PAPER_THRESHOLDS.items()}
  return thresholds, max(1, int(round(PAPER_MAX_ITER_TO_ALTER * scale)))


# Caption styles the study samples: "plain" names colour and shape ("a red circle and a blue square"),
# "shapes_only" the shapes alone ("a circle and a star", one noun per object as the paper's animal prompts; an
# object is then found when its shape is drawn, in any colour, and colour figures do not apply).
STUDY_CAPTION_STYLES = ("plain", "shapes_only")


def study_captions(num_captions: int, resolution: int = 32, holdout: Sequence = ("purple star",),
                   seed: int = 0, offset: int = 0, caption_style: str = "plain") -> list[dict]:
  """`num_captions` two-object test scenes from scene `offset` on: [{"caption", "objects": [(colour, shape)] in
  caption order (colour None for "shapes_only"), "subjects": the two shape words, "held_out": whether a pair is in
  `holdout` (named pairs only)}]. With "shapes_only", scenes whose two objects share a shape are passed over (the
  caption would name one shape twice)."""
  from t2i_common.data.shapes import ShapesSource
  from t2i_common.data.shapes_captions import parse_caption

  if caption_style not in STUDY_CAPTION_STYLES:
    raise ValueError(f"caption_style {caption_style!r}: choose from {STUDY_CAPTION_STYLES}.")
  named = caption_style == "plain"
  # Scenes passed over are few (two shapes of eight alike: 1 in 8), so twice the scenes asked for is plenty.
  # Unnamed colours hold no pair out, so no test scene is made to show one (that would favour stars).
  source = ShapesSource("test", resolution=resolution, seed=seed, num_examples=offset + 2 * num_captions + 64,
                        holdout=holdout if named else (), min_objects=2, max_objects=2, caption_style=caption_style)
  out = []
  for i in range(offset, len(source)):
    if len(out) == num_captions:
      break
    record = source.text_record(i)
    scene = [(o["color"] if named else None, o["shape"]) for o in record["objects"]]
    if not named and len({shape for _, shape in scene}) < len(scene):
      continue
    caption = record["captions"][0]
    objects = [(o["color"], o["shape"]) for o in parse_caption(caption)["objects"]]
    assert sorted(objects, key=str) == sorted(scene, key=str), (caption, record)
    out.append({"caption": caption, "objects": objects, "subjects": [s for _, s in objects],
                "held_out": named and any(p in source.holdout for p in objects)})
  if len(out) < num_captions:
    raise ValueError(f"only {len(out)} usable two-object test scenes from scene {offset} on; ask for fewer "
                     "captions or another offset.")
  return out


_MATCH_KEYS = {"found": lambda p: tuple(p), "colours": lambda p: p[0], "shapes": lambda p: p[1]}


def objects_found(objects: Sequence[tuple[str, str]], detections: Sequence[dict], by: str = "found") -> list[bool]:
  """Per listed object, whether the detections hold it: with colour and shape (by="found"; an object without a
  colour, None, by its shape in any colour: the oracle's `match`), by colour alone ("colours") or by shape alone
  ("shapes"); a detection serves one object (multiset matching, as the oracle's `score`)."""
  from t2i_common.data.shapes_oracle import match

  key = _MATCH_KEYS[by]
  got = collections.Counter(key((d["color"], d["shape"])) for d in detections)
  if by == "found":
    got = match(collections.Counter(map(tuple, objects)), got)
  out = []
  for obj in objects:
    out.append(got[key(obj)] > 0)
    got[key(obj)] -= 1
  return out


def pair_outcome(objects: Sequence[tuple[str, str]], detections: Sequence[dict]) -> dict[str, Optional[int]]:
  """How many of the listed objects the detections hold: with colour and shape ("found"), by shape alone
  ("shapes"), by colour alone ("colours"; None when the caption names no colours)."""
  out = {by: sum(objects_found(objects, detections, by)) for by in _MATCH_KEYS}
  if any(colour is None for colour, _ in objects):
    out["colours"] = None
  return out


def attention_premise(found: Sequence[Sequence[bool]], maxes: np.ndarray, words: str) -> dict[str, Any]:
  """Whether Attend-and-Excite's signal points at the object the model leaves out, on this model.

  found: per plain image, which of its two objects the oracle found; maxes [N, K]: the subject words' smoothed
  maximum attention at step 0, on the initial noise (what plain sampling sees; `initial_max_attention[:, 0]`),
  subjects in the order of `subject_lists`. An object's attention is its subject word's (with "both", the lower of
  its colour and shape words', as the loss takes the least attended). Over the plain images with exactly one of
  the two objects: the fraction where the missing object's word is the less attended (50 %: the attention says
  nothing about which object is missing; near 100 %: the update pushes the word of the missing object), and the
  mean attention of found and missing objects over all images."""
  found = np.asarray(found, bool)
  maxes = np.asarray(maxes, np.float64)
  n = found.shape[1]
  per_object = np.minimum(maxes[:, :n], maxes[:, n:2 * n]) if words == "both" else maxes[:, :n]
  one = found.sum(axis=1) == n - 1
  missing = np.where(one[:, None], ~found, False)
  lower = [per_object[i][missing[i]].max() < per_object[i][~missing[i]].min() for i in np.flatnonzero(one)]
  return {"neglect_images": int(one.sum()),
          "missing_less_attended": float(np.mean(lower)) if lower else None,
          "attention_found": float(per_object[found].mean()) if found.any() else None,
          "attention_missing": float(per_object[~found].mean()) if (~found).any() else None}


def summarize(outcomes: Sequence[dict[str, int]], num_objects: int = 2) -> dict[str, float]:
  """The study's figures over images' `pair_outcome`s (see the module docstring)."""
  n = len(outcomes)
  if not n:
    return {"num_images": 0}
  found = np.asarray([o["found"] for o in outcomes])
  both_shapes = np.asarray([o["shapes"] == num_objects for o in outcomes])
  both_colours = np.asarray([o["colours"] == num_objects for o in outcomes])
  all_present = found == num_objects
  colours_named = all(o["colours"] is not None for o in outcomes)
  return {
      "num_images": n,
      "all_present": float(all_present.mean()),
      "neglect": float((found == num_objects - 1).mean()),
      "none": float((found == 0).mean()),
      "object_recall": float(found.sum() / (num_objects * n)),
      "both_shapes": float(both_shapes.mean()),
      "both_colours": float(both_colours.mean()) if colours_named else None,
      "binding": (float((all_present & both_shapes).sum() / both_shapes.sum())
                  if both_shapes.any() and colours_named else None),
  }


def paired(plain: Sequence[dict[str, int]], other: Sequence[dict[str, int]], num_objects: int = 2) -> dict:
  """Per-image changes against plain sampling on the same seeds."""
  a = np.asarray([o["found"] == num_objects for o in plain])
  b = np.asarray([o["found"] == num_objects for o in other])
  return {"rescued": int((~a & b).sum()), "lost": int((a & ~b).sum())}


# Which words of "a red circle and a blue square" Attend-and-Excite excites: the shape words (the paper's
# choice, its nouns), the colour words, or all four ("both": the loss is that of the least attended of them).
SUBJECT_WORDS = ("shape", "colour", "both")


def subject_lists(captions: Sequence[dict], seeds: Sequence[int]) -> dict[str, list[list[str]]]:
  """For each choice of SUBJECT_WORDS, the words excited in each image (captions x seeds, caption-major)."""
  shapes = [list(c["subjects"]) for c in captions for _ in seeds]
  colours = [[colour for colour, _ in c["objects"]] for c in captions for _ in seeds]
  return {"shape": shapes, "colour": colours, "both": [c + s for c, s in zip(colours, shapes)]}


def _arm_name(scale_factor: float, max_iter: int, words: str, several: bool) -> str:
  name = f"A&E sf={scale_factor:g} iters={max_iter}" if several else "A&E"
  return {"shape": name, "colour": f"{name} on colours", "both": f"{name} on colours and shapes"}[words]


def run_study(pipe: Any, captions: Sequence[dict], seeds: Sequence[int], *, steps: int = 25,
              guidance_scale: float = 4.0, scale_factors: Sequence[float] = (20.0,),
              subject_words: Sequence[str] = ("shape",),
              max_iters: Optional[Sequence[int]] = None, thresholds: Optional[dict[int, float]] = None,
              attn_res: Optional[tuple[int, int]] = None, smooth_attentions: bool = True, batch_size: int = 32,
              holdout: Sequence = ("purple star",), progress: bool = True) -> tuple[dict, dict]:
  """Samples and scores every arm; returns (results, images {arm: uint8 [N, H, W, 3]}), images in the order
  caption 0 seed 0, caption 0 seed 1, ... ."""
  from tqdm.auto import tqdm

  from t2i_common.data.shapes import parse_holdout
  from t2i_common.data.shapes_oracle import score
  from t2i_common.logging import to_uint8

  default_thresholds, default_max_iter = default_schedule(steps)
  thresholds = default_thresholds if thresholds is None else dict(thresholds)
  max_iters = [default_max_iter] if not max_iters else list(max_iters)
  if attn_res is None:
    attn_res = cross_attention_resolution(pipe)
  prompts = [c["caption"] for c in captions for _ in seeds]
  bad = [w for w in subject_words if w not in SUBJECT_WORDS]
  if bad or not subject_words:
    raise ValueError(f"subject_words {list(subject_words)}: choose from {SUBJECT_WORDS}.")
  if any(colour is None for c in captions for colour, _ in c["objects"]) and set(subject_words) - {"shape"}:
    raise ValueError(f"subject_words {list(subject_words)}: these captions name no colours (style "
                     "'shapes_only'); excite the shape words (subject_words=['shape']).")
  subjects = subject_lists(captions, seeds)
  objects = [c["objects"] for c in captions for _ in seeds]
  held_out = np.asarray([c["held_out"] for c in captions for _ in seeds])
  image_seeds = [s for _ in captions for s in seeds]
  several = len(scale_factors) * len(max_iters) > 1
  arms = [("plain", None, "shape")] + [
      (_arm_name(sf, it, words, several), {"scale_factor": float(sf), "max_iter_to_alter": int(it)}, words)
      for words, sf, it in itertools.product(subject_words, scale_factors, max_iters)]
  holdout_pairs = parse_holdout(holdout)
  results: dict[str, Any] = {
      "num_captions": len(captions), "seeds": list(seeds), "steps": steps, "guidance_scale": guidance_scale,
      "attend_and_excite": {"thresholds": {str(k): v for k, v in thresholds.items()}, "attn_res": list(attn_res),
                            "smooth_attentions": smooth_attentions},
      "arms": {}}
  all_images, plain_outcomes, plain_found = {}, None, None
  for name, settings, words in arms:
    chunks, run_s, compile_s, diagnostics = [], 0.0, 0.0, []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc=name, unit="batch", disable=not progress):
      sl = slice(start, start + batch_size)
      kwargs = {}
      if settings is not None:
        kwargs = dict(subjects=subjects[words][sl], thresholds=thresholds, attn_res=tuple(attn_res),
                      smooth_attentions=smooth_attentions, **settings)
      chunks.append(to_uint8(pipe(prompts[sl], num_inference_steps=steps, guidance_scale=guidance_scale,
                                  seeds=image_seeds[sl], **kwargs)))
      run_s += pipe.last_timings["run_s"]
      compile_s += pipe.last_timings["compile_s"]
      if settings is not None:
        diagnostics.append(dict(pipe.last_attend_excite))
    images = np.concatenate(chunks)
    detections: list = []
    oracle = score(list(images), objects, detections=detections, holdout=holdout_pairs)
    outcomes = [pair_outcome(o, d) for o, d in zip(objects, detections)]
    found = [objects_found(o, d) for o, d in zip(objects, detections)]
    arm = {"settings": settings or {}, "subject_words": words if settings else None, **summarize(outcomes),
           "seen": summarize([o for o, h in zip(outcomes, held_out) if not h]),
           "held_out": summarize([o for o, h in zip(outcomes, held_out) if h]),
           "oracle": {k: v for k, v in oracle.items() if k != "num_images"},
           "time_per_image_s": run_s / len(prompts), "compile_s": compile_s,
           "per_image": [{"caption": p, "subjects": subj, "seed": s, "found": o["found"], "detections": [
               f"{d['color']} {d['shape']}" for d in dets]}
               for p, subj, s, o, dets in zip(prompts, subjects[words], image_seeds, outcomes, detections)]}
    if settings is not None:
      arm["attend_excite"] = summarize_diagnostics(diagnostics)
      arm["vs_plain"] = paired(plain_outcomes, outcomes)
      arm["premise"] = attention_premise(
          plain_found, np.concatenate([c["initial_max_attention"][:, 0] for c in diagnostics]), words)
    else:
      plain_outcomes, plain_found = outcomes, found
    results["arms"][name] = arm
    all_images[name] = images
  return results, all_images


# Per-image, per-step arrays of `pipe.last_attend_excite` ([batch, step] or [batch, step, subject]).
DIAGNOSTICS = ("loss", "initial_loss", "max_attention", "initial_max_attention", "refinement_steps",
               "skipped_updates")


def summarize_diagnostics(chunks: Sequence[dict]) -> dict[str, Any]:
  """Over all images of the sampler calls' `pipe.last_attend_excite`: per-step means of DIAGNOSTICS (None where
  no step ran a gradient pass), per image the totals of the counts, and the UNet gradient evaluations."""
  out: dict[str, Any] = {"num_gradient_evals": int(sum(c["num_gradient_evals"] for c in chunks))}
  for key in DIAGNOSTICS:
    raw = [np.asarray(c[key]) for c in chunks]
    values = np.concatenate([v.reshape(v.shape[0], v.shape[1], -1) for v in raw]).astype(np.float64)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN steps (no gradient pass) stay NaN
      per_step = np.nanmean(values, axis=(0, 2))
    out[key] = {"per_step": [None if np.isnan(v) else round(float(v), 4) for v in per_step]}
    if np.issubdtype(raw[0].dtype, np.integer):
      out[key]["per_image_total"] = float(values.sum(axis=(1, 2)).mean())
  return out


def cross_attention_resolution(pipe: Any) -> tuple[int, int]:
  """(h, w) of the largest cross-attention maps of the pipeline's UNet at its default size."""
  latent = pipe.default_size // pipe.vae_scale_factor
  cfg = pipe.unet.config
  sizes = [latent // 2**level for level, kind in enumerate(cfg.down_block_types) if "CrossAttn" in kind]
  if not sizes:
    raise ValueError(f"the pipeline's UNet has no cross-attention down block ({cfg.down_block_types}): "
                     "Attend-and-Excite needs cross-attention maps.")
  return (max(sizes), max(sizes))


def markdown_table(results: dict) -> str:
  """One row per figure, one column per arm; seen / held-out pairs as their own rows."""
  arms = list(results["arms"])
  rows = [("all_present", "all_present"), ("neglect (exactly one of two)", "neglect"), ("none found", "none"),
          ("object recall", "object_recall"), ("both shapes drawn", "both_shapes"),
          ("both colours drawn", "both_colours"),
          ("colour binding (of both shapes)", "binding")]
  lines = ["| | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
  for label, key in rows:
    lines.append(f"| {label} | " + " | ".join(_pct(results["arms"][a].get(key)) for a in arms) + " |")
  for group in ("seen", "held_out"):
    n = results["arms"]["plain"][group]["num_images"]
    lines.append(f"| all_present, {group.replace('_', '-')} pairs ({n} images) | "
                 + " | ".join(_pct(results["arms"][a][group].get("all_present")) for a in arms) + " |")
  lines.append("| rescued / lost vs plain (images) | " + " | ".join(
      "-" if "vs_plain" not in results["arms"][a] else
      f"{results['arms'][a]['vs_plain']['rescued']} / {results['arms'][a]['vs_plain']['lost']}" for a in arms) + " |")
  lines.append("| missing object's word less attended at step 0 (plain images with one of two) | " + " | ".join(
      "-" if "premise" not in results["arms"][a] else _pct(results["arms"][a]["premise"]["missing_less_attended"])
      for a in arms) + " |")
  lines.append("| time per image (s, compile apart) | " + " | ".join(
      f"{results['arms'][a]['time_per_image_s']:.3f}" for a in arms) + " |")
  return "\n".join(lines) + "\n"


def _pct(value: Any) -> str:
  if value is None or (isinstance(value, float) and np.isnan(value)):
    return "-"
  return f"{100 * value:.1f} %"


def save_attention_pictures(pipe: Any, results: dict, out_dir: str, num_images: int,
                            arm: Optional[str] = None) -> list[str]:
  """attention_<k>.png for the study's first `num_images` images: each shape word's smoothed cross-attention map
  at the first step, the last altered step and the last step, over the image, plainly and with the
  Attend-and-Excite settings of `arm` (default: the first), the same seed (attend_excite/pictures.py). The maps
  are recorded by extra calls (the plain row: no update and no refinement, which samples the plain image)."""
  from diffusion_jax.attend_excite.pictures import save_attention_grid, token_words

  arm = arm or next(a for a in results["arms"] if a != "plain")
  records = results["arms"]["plain"]["per_image"][:num_images]
  ae = results["attend_and_excite"]
  settings = results["arms"][arm]["settings"]
  steps = sorted({0, settings["max_iter_to_alter"] - 1, results["steps"] - 1})
  common = dict(num_inference_steps=results["steps"], guidance_scale=results["guidance_scale"],
                seeds=[r["seed"] for r in records],
                subjects=[r["subjects"] for r in results["arms"][arm]["per_image"][:num_images]],
                attn_res=tuple(ae["attn_res"]), smooth_attentions=ae["smooth_attentions"], attention_steps=steps)
  prompts = [r["caption"] for r in records]
  plain = pipe(prompts, max_iter_to_alter=0, thresholds={}, **common)
  plain_maps = pipe.last_attend_excite["attention_maps"]
  excited = pipe(prompts, thresholds={int(k): v for k, v in ae["thresholds"].items()}, **common, **settings)
  excited_maps, indices = pipe.last_attend_excite["attention_maps"], pipe.last_attend_excite["token_indices"]
  paths = []
  for k, prompt in enumerate(prompts):
    path = os.path.join(out_dir, f"attention_{k:02d}.png")
    save_attention_grid(path, {"plain": (plain[k], plain_maps[k]), arm: (excited[k], excited_maps[k])},
                        token_words(pipe.get_indices(prompt), indices[k]), steps)
    paths.append(path)
  return paths


def save_grid(results: dict, images: dict, path: str, num_captions: int) -> str:
  """Plain and each Attend-and-Excite arm side by side for the first `num_captions` images; each label holds
  the arm and the oracle's count of found objects, the plain one the caption too."""
  from t2i_common.logging import CAPTIONED_MIN_SIDE, save_image_grid

  arms = list(images)
  n = min(num_captions, len(next(iter(images.values()))))
  tiles, labels = [], []
  for i in range(n):
    for a in arms:
      tiles.append(images[a][i])
      record = results["arms"][a]["per_image"][i]
      tag = "plain" if a == "plain" else a
      labels.append(f"{record['caption']} | {tag}: {record['found']}/2" if a == "plain"
                    else f"{tag}: {record['found']}/2")
  pairs_per_row = max(1, 8 // len(arms))
  save_image_grid(np.stack(tiles), path, captions=labels, ncols=pairs_per_row * len(arms),
                  min_side=CAPTIONED_MIN_SIDE)
  return path


def _words(text: str) -> list[str]:
  words = [w.strip() for w in text.split(",") if w.strip()]
  if not words or any(w not in SUBJECT_WORDS for w in words):
    raise argparse.ArgumentTypeError(f"--subject-words {text!r}: choose from {SUBJECT_WORDS}, comma-separated.")
  return words


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m diffusion_jax.neglect_study", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--pretrained", required=True, help="pipeline folder of a shapes LDM (e.g. shapes_ldm.py:pairs)")
  p.add_argument("--out", required=True, help="folder for study.json, study.md and grid.png")
  p.add_argument("--num-captions", type=positive_int, default=96, help="two-object test captions")
  p.add_argument("--caption-style", choices=STUDY_CAPTION_STYLES, default="plain",
                 help="plain: 'a red circle and a blue square'; shapes_only: 'a circle and a star' (for a model "
                      "trained on such captions, data.shapes.caption_style=shapes_only)")
  p.add_argument("--caption-offset", type=int, default=0,
                 help="first test scene (e.g. choose A&E settings on other captions than the study's)")
  p.add_argument("--seeds", type=parse_seeds, default=[0], help="seeds per caption, e.g. 0-3 (all arms share them)")
  p.add_argument("--steps", type=positive_int, default=25, help="sampling steps")
  p.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale")
  p.add_argument("--scale-factor", type=comma_separated(float), default=[20.0],
                 help="A&E step size(s); several make a sweep")
  p.add_argument("--subject-words", type=_words, default=["shape"],
                 help="words A&E excites: shape (the paper's nouns), colour, or both as two arms (shape,colour)")
  p.add_argument("--max-iter-to-alter", type=comma_separated(positive_int), default=None,
                 help="A&E steps with a latent update (default: half the steps, as the paper's 25 of 50)")
  p.add_argument("--thresholds", type=parse_step_values, default=None,
                 help="step:threshold pairs, or none for no refinement (default: the paper's scaled to --steps)")
  p.add_argument("--attn-res", type=parse_resolution, default=None,
                 help="h,w (or one number) of the cross-attention maps (default: the UNet's largest "
                 "cross-attention resolution)")
  p.add_argument("--no-smoothing", action="store_true",
                 help="A&E without the Gaussian smoothing of the maps (on 8 x 8 maps it lowers one-pixel peaks "
                      "by two thirds)")
  p.add_argument("--holdout", default="purple star", help="held-out colour-shape pairs, comma-separated")
  p.add_argument("--batch-size", type=positive_int, default=32, help="images per sampler call")
  p.add_argument("--grid-captions", type=positive_int, default=16, help="images in grid.png (per arm)")
  p.add_argument("--attention-images", type=int, default=4,
                 help="attention pictures (attention_<k>.png) of the first images, with the first A&E arm; 0: none")
  return p


def main(argv: Optional[Sequence[str]] = None) -> dict:
  args = build_parser().parse_args(argv)
  from diffusion_jax.pipeline import from_pretrained

  if not os.path.isfile(os.path.join(args.pretrained, "model_index.json")):
    raise FileNotFoundError(f"--pretrained {args.pretrained!r} is not a pipeline folder (no model_index.json); "
                            "train one with configs/diffusion/shapes_ldm.py:pairs.")
  holdout = tuple(h.strip() for h in args.holdout.split(",") if h.strip())
  start = time.perf_counter()
  pipe = from_pretrained(args.pretrained)
  if args.caption_offset < 0:
    raise ValueError(f"--caption-offset must be >= 0, got {args.caption_offset}.")
  captions = study_captions(args.num_captions, pipe.default_size, holdout, offset=args.caption_offset,
                            caption_style=args.caption_style)
  results, images = run_study(pipe, captions, args.seeds, steps=args.steps, guidance_scale=args.guidance,
                              scale_factors=args.scale_factor, subject_words=args.subject_words,
                              max_iters=args.max_iter_to_alter,
                              thresholds=args.thresholds, attn_res=args.attn_res,
                              smooth_attentions=not args.no_smoothing, batch_size=args.batch_size,
                              holdout=holdout)
  results["pretrained"] = args.pretrained
  results["wall_s"] = time.perf_counter() - start
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "study.json"), "w") as f:
    json.dump(results, f, indent=1)
  table = markdown_table(results)
  with open(os.path.join(args.out, "study.md"), "w") as f:
    f.write(table)
  save_grid(results, images, os.path.join(args.out, "grid.png"), args.grid_captions)
  if args.attention_images > 0 and len(results["arms"]) > 1:
    save_attention_pictures(pipe, results, args.out, args.attention_images)
  print(table)
  return results


if __name__ == "__main__":
  with errors_as_exit("neglect_study"):
    main()
