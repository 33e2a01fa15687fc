"""Attend-and-Excite's quantitative benchmark (Chefer et al. 2023, Sec. 5): images and CLIP similarities.

    python -m diffusion_jax.attend_excite_benchmark --pretrained sd-v1-4 --clip clip-vit-base-patch16 \\
        --subset all --seeds 64 --out runs/ae_bench [--no-attend-and-excite] [--steps 50] [--batch-size 8]

The 276 prompts (attend_excite_prompts.py: animals 66, animals_objects 144, objects 66), seeds 0 .. N-1 each,
with the two subject nouns' token indices (the last word of each half of the prompt, found in the pipeline's
`get_indices(prompt)` table, e.g. [2, 5] for "a cat and a frog", [2, 6] for "a monkey and a red car", [3, 7]
for "a pink crown and a purple bow"), sampled in batches of --batch-size images that may mix prompts (each
image carries its own indices): `pipe(prompts, token_indices=[[...], ...], seeds=[...], num_inference_steps=...,
guidance_scale=...)`, or without token_indices for plain Stable Diffusion.

Output, in the official repo's layout so its metric scripts read it too:
    OUT/run.json                     the settings the images were made with (a resumed run must match them)
    OUT/images/<prompt>/<seed>.png   one image per prompt and seed
    OUT/metrics_<subset>.json        per subset: mean full-prompt and minimum-object CLIP similarity, image
                                     and prompt counts; per prompt: token indices and every image's scores
    OUT/metrics_<subset>.md          the same per-subset figures as a Markdown table
    OUT/grid_<name>.png              per subset, a look at the first 8 prompts x 4 seeds with their scores

Resumable: what is to do is decided from the files on disk. Every PNG is written to a temporary name and renamed
when complete, so a killed run leaves no partial image under a final name; a rerun (or a run of a larger
--subset / more --seeds into the same OUT) computes only the missing images.

Metrics (clip_score.py): full-prompt similarity = cosine(image, prompt); minimum-object similarity = the smaller
of the similarities with the two halves of the prompt (split at " and ", else " with "); text embeddings averaged
over CLIP's 80 ImageNet templates. Aggregates are means over all images of a subset, as the official
metrics/compute_clip_similarity.py aggregates.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from diffusion_jax.attend_excite_prompts import PROMPTS
from diffusion_jax.clip_score import ClipScorer, split_prompt, to_uint8
from diffusion_jax.tokenizer import has_tokenizer
from t2i_common.cli_args import positive_int

log = logging.getLogger(__name__)

SUBSETS = tuple(PROMPTS)  # animals, animals_objects, objects
SUBSET_TITLES = {"animals": "Animal-Animal", "animals_objects": "Animal-Object", "objects": "Object-Object"}
# (prompts, token_indices or None, seeds) -> float images [B, H, W, 3] in [0, 1].
SampleFn = Callable[[list[str], Optional[list[list[int]]], list[int]], np.ndarray]
# prompt -> {token position: token}, as the pipeline's get_indices.
GetIndicesFn = Callable[[str], dict]
# Settings that change the images: a resumed run must use the same ones.
_IMAGE_SETTINGS = ("pretrained", "attend_and_excite", "num_inference_steps", "guidance_scale", "dtype", "scheduler")


def subset_prompts(subset: str, max_prompts: Optional[int] = None) -> list[tuple[str, str]]:
  """[(subset name, prompt)] of one subset or of "all" (in the official order); max_prompts: the first N of each."""
  if subset != "all" and subset not in PROMPTS:
    raise ValueError(f"unknown subset {subset!r}; choose one of {', '.join(SUBSETS)} or all.")
  names = SUBSETS if subset == "all" else (subset,)
  return [(name, p) for name in names for p in PROMPTS[name][:max_prompts]]


def subject_words(prompt: str) -> tuple[str, str]:
  """The two subject nouns: the last word of each half ("a monkey and a red car" -> ("monkey", "car"))."""
  first, second = split_prompt(prompt)
  return first.split()[-1], second.split()[-1]


def _token_text(token: str) -> str:
  return token.lower().replace("</w>", "").strip()


def subject_token_indices(prompt: str, get_indices: GetIndicesFn) -> list[int]:
  """Token positions of the prompt's two subject nouns in the table get_indices(prompt) = {position: token}
  (tokens as CLIP's vocabulary writes them, e.g. "cat</w>"). Each noun must be a single token; the second is
  looked for after the first (so a repeated noun gets two different positions)."""
  table = {int(i): str(t) for i, t in get_indices(prompt).items()}
  indices, after = [], 0
  for word in subject_words(prompt):
    hits = [i for i in sorted(table) if i > after and _token_text(table[i]) == word]
    if not hits:
      raise ValueError(f"the subject {word!r} of {prompt!r} is not a single token of the pipeline's tokenizer; "
                       f"tokens: {table}. Attend-and-Excite needs one token per subject.")
    indices.append(hits[0])
    after = hits[0]
  return indices


def image_path(out: str, prompt: str, seed: int) -> str:
  return os.path.join(out, "images", prompt, f"{seed}.png")


def _write_atomic(path: str, write: Callable[[str], None]) -> None:
  """write(tmp) then rename, so `path` exists only complete (a kill leaves at most a stale .tmp file)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  write(tmp)
  os.replace(tmp, path)


def _save_png(path: str, image: np.ndarray) -> None:
  from PIL import Image
  _write_atomic(path, lambda tmp: Image.fromarray(to_uint8(image)).save(tmp, format="PNG"))


def _save_text(path: str, text: str) -> None:
  def write(tmp):
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
  _write_atomic(path, write)


def _save_json(path: str, obj: Any) -> None:
  _save_text(path, json.dumps(obj, indent=2))


def check_settings(out: str, settings: dict) -> None:
  """Records the image settings in OUT/run.json, or checks them against those already there."""
  path = os.path.join(out, "run.json")
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      before = json.load(f)
    diff = {k: (before.get(k), settings.get(k)) for k in _IMAGE_SETTINGS if before.get(k) != settings.get(k)}
    if diff:
      raise ValueError(f"{out!r} holds images made with other settings (setting: (there, now)): {diff}. "
                       "Resume with the same settings or choose another --out.")
    return
  os.makedirs(out, exist_ok=True)
  _save_json(path, settings)


def pipeline_sampler(pipe: Any, *, attend_and_excite: bool, num_inference_steps: int,
                     guidance_scale: float) -> SampleFn:
  """The benchmark's calls of a diffusion_jax Pipeline (with or without Attend-and-Excite)."""
  def sample(prompts, token_indices, seeds):
    kwargs = dict(seeds=list(seeds), num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
    if attend_and_excite:
      kwargs["token_indices"] = token_indices
    return pipe(list(prompts), **kwargs)
  return sample


def generate_images(out: str, work: Sequence[tuple[str, int]], sample_fn: SampleFn,
                    indices: Optional[dict[str, list[int]]], batch_size: int = 8, progress: bool = True) -> int:
  """Samples the (prompt, seed) pairs of `work` whose PNG is missing, batch_size per call; returns how many."""
  from tqdm.auto import tqdm
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  todo = [(p, s) for p, s in work if not os.path.isfile(image_path(out, p, s))]
  if len(todo) < len(work):
    log.info("%d of %d images already in %s; computing the other %d.", len(work) - len(todo), len(work), out,
             len(todo))
  bar = tqdm(total=len(todo), unit="img", desc="sampling", disable=not progress or not todo)
  for start in range(0, len(todo), batch_size):
    batch = todo[start:start + batch_size]
    prompts, seeds = [p for p, _ in batch], [s for _, s in batch]
    images = np.asarray(sample_fn(prompts, [indices[p] for p in prompts] if indices else None, seeds))
    if images.shape[0] != len(batch) or images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"the sampler returned {images.shape} for {len(batch)} images; expected [B, H, W, 3].")
    if not np.isfinite(images).all():
      bad = sorted({batch[i] for i in np.nonzero(~np.isfinite(images).reshape(len(batch), -1).all(1))[0]})
      raise FloatingPointError(f"non-finite pixels in the images of {bad}; nothing of this batch was saved.")
    for (prompt, seed), image in zip(batch, images):
      _save_png(image_path(out, prompt, seed), image)
    bar.set_postfix_str(prompts[-1], refresh=False)
    bar.update(len(batch))
  bar.close()
  return len(todo)


def compute_metrics(out: str, items: Sequence[tuple[str, str]], seeds: Sequence[int], scorer: ClipScorer,
                    indices: Optional[dict[str, list[int]]] = None, progress: bool = True) -> dict:
  """CLIP similarities of the saved images: {"subsets": {name: aggregates}, "prompts": {prompt: per image}}."""
  from tqdm.auto import tqdm
  per_prompt, per_subset = {}, {}
  for subset, prompt in tqdm(items, unit="prompt", desc="CLIP scores", disable=not progress):
    paths = [image_path(out, prompt, s) for s in seeds]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
      raise FileNotFoundError(f"{len(missing)} images of {prompt!r} are missing (e.g. {missing[0]}); run the "
                              "benchmark without --metrics-only first.")
    scores = scorer.prompt_scores(prompt, paths)
    entry = {"subset": subset, "seeds": list(seeds), **{k: [float(x) for x in v] for k, v in scores.items()}}
    if indices:
      entry["token_indices"] = indices[prompt]
    per_prompt[prompt] = entry
    acc = per_subset.setdefault(subset, {"full_prompt": [], "min_object": [], "prompts": 0})
    acc["full_prompt"].extend(entry["full_prompt"])
    acc["min_object"].extend(entry["min_object"])
    acc["prompts"] += 1
  subsets = {name: {"num_prompts": a["prompts"], "num_images": len(a["full_prompt"]),
                    "full_prompt_similarity": float(np.mean(a["full_prompt"])),
                    "min_object_similarity": float(np.mean(a["min_object"]))}
             for name, a in per_subset.items()}
  return {"subsets": subsets, "prompts": per_prompt}


def markdown_table(metrics: dict, method: str) -> str:
  lines = [f"CLIP ViT similarities ({method}; mean over images)", "",
           "| subset | prompts | images | full-prompt similarity | minimum-object similarity |",
           "|---|---:|---:|---:|---:|"]
  for name, m in metrics["subsets"].items():
    lines.append(f"| {SUBSET_TITLES.get(name, name)} | {m['num_prompts']} | {m['num_images']} | "
                 f"{m['full_prompt_similarity']:.4f} | {m['min_object_similarity']:.4f} |")
  return "\n".join(lines) + "\n"


def save_preview_grids(out: str, metrics: dict, num_prompts: int = 8, num_seeds: int = 4,
                       thumb: int = 192) -> list[str]:
  """OUT/grid_<subset>.png: the first prompts x seeds of each scored subset, captioned with each image's
  full-prompt / minimum-object similarity; images shrunk to `thumb` px."""
  from PIL import Image

  from t2i_common.logging import CAPTIONED_MIN_SIDE, save_image_grid
  paths = []
  for name in metrics["subsets"]:
    prompts = [p for p, e in metrics["prompts"].items() if e["subset"] == name][:num_prompts]
    images, captions = [], []
    for prompt in prompts:
      entry = metrics["prompts"][prompt]
      for k, seed in enumerate(entry["seeds"][:num_seeds]):
        with Image.open(image_path(out, prompt, seed)) as im:
          im = im.convert("RGB")
          im.thumbnail((thumb, thumb))
          images.append(np.asarray(im))
        captions.append(f"{prompt} #{seed} full {entry['full_prompt'][k]:.3f} "
                        f"min {entry['min_object'][k]:.3f}")
    path = os.path.join(out, f"grid_{name}.png")
    save_image_grid(images, path, captions, ncols=min(num_seeds, len(images)), min_side=CAPTIONED_MIN_SIDE)
    paths.append(path)
  return paths


def run_benchmark(out: str, scorer: Optional[ClipScorer], *, pipe: Any = None, subset: str = "all",
                  num_seeds: int = 64, attend_and_excite: bool = True, num_inference_steps: int = 50,
                  guidance_scale: float = 7.5, batch_size: int = 8, max_prompts: Optional[int] = None,
                  sample_fn: Optional[SampleFn] = None, get_indices: Optional[GetIndicesFn] = None,
                  settings: Optional[dict] = None, metrics_only: bool = False, progress: bool = True) -> dict:
  """Images (missing ones only) then metrics; returns the metrics dict also written to OUT/metrics_<subset>.json.

  pipe: a diffusion_jax Pipeline; sample_fn / get_indices replace its __call__ / get_indices (tests, other
  samplers). settings: extra entries for run.json (e.g. the model folder and dtype). scorer None: images only.
  """
  if num_seeds < 1:
    raise ValueError(f"--seeds must be >= 1, got {num_seeds}.")
  items = subset_prompts(subset, max_prompts)
  seeds = list(range(num_seeds))
  indices = None
  if attend_and_excite:
    get_indices = get_indices or getattr(pipe, "get_indices", None)
    if get_indices is None:
      raise ValueError("Attend-and-Excite needs the pipeline's get_indices(prompt) (and token_indices in its call); "
                       "this pipeline has neither: pass --no-attend-and-excite for plain sampling.")
    indices = {p: subject_token_indices(p, get_indices) for _, p in items}
  record = dict(settings or {}, attend_and_excite=attend_and_excite, num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale)
  check_settings(out, record)
  computed, elapsed = 0, 0.0
  if not metrics_only:
    if sample_fn is None:
      if pipe is None:
        raise ValueError("give a pipeline or a sample_fn.")
      sample_fn = pipeline_sampler(pipe, attend_and_excite=attend_and_excite,
                                   num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
    start = time.perf_counter()
    computed = generate_images(out, [(p, s) for _, p in items for s in seeds], sample_fn, indices, batch_size,
                               progress)
    elapsed = time.perf_counter() - start
  if scorer is None:
    return {}
  metrics = compute_metrics(out, items, seeds, scorer, indices, progress)
  metrics = {"settings": record, "subset": subset, "num_seeds": num_seeds,
             "generation": {"images_computed": computed, "seconds": elapsed}, **metrics}
  method = "Attend-and-Excite" if attend_and_excite else "plain sampling"
  _save_json(os.path.join(out, f"metrics_{subset}.json"), metrics)
  _save_text(os.path.join(out, f"metrics_{subset}.md"), markdown_table(metrics, method))
  save_preview_grids(out, metrics)
  return metrics


def main(argv: Optional[Sequence[str]] = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--pretrained", required=True, help="diffusers Stable Diffusion folder (the paper: SD 1.4)")
  parser.add_argument("--clip", required=True, help="transformers CLIPModel folder (the paper: ViT-B/16)")
  parser.add_argument("--clip-tokenizer", default=None,
                      help="folder with the CLIP tokenizer (vocab.json + merges.txt, or tokenizer.json; default: "
                           "the --clip folder if it has one, else the pipeline's tokenizer/, the same CLIP BPE)")
  parser.add_argument("--subset", default="all", choices=SUBSETS + ("all",))
  parser.add_argument("--seeds", type=positive_int, default=64, help="seeds 0 .. N-1 per prompt (the paper: 64)")
  parser.add_argument("--out", required=True, help="output folder (resumable)")
  parser.add_argument("--no-attend-and-excite", action="store_true", help="plain sampling (the baseline)")
  parser.add_argument("--steps", type=positive_int, default=50, help="inference steps (the paper: 50)")
  parser.add_argument("--guidance-scale", type=float, default=7.5)
  parser.add_argument("--batch-size", type=positive_int, default=8, help="images per sampling call (may mix prompts)")
  parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
  parser.add_argument("--scheduler", default=None, help="override the folder's scheduler (e.g. ddim)")
  parser.add_argument("--max-prompts", type=positive_int, default=None, help="only the first N prompts of each subset")
  parser.add_argument("--metrics-only", action="store_true", help="score the images already in --out")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")

  import diffusion_jax
  tokenizer_folder = args.clip_tokenizer
  if tokenizer_folder is None:
    tokenizer_folder = args.clip if has_tokenizer(args.clip) else os.path.join(args.pretrained, "tokenizer")
    if tokenizer_folder != args.clip:
      log.info("no tokenizer in %s; CLIP texts are tokenized with %s.", args.clip, tokenizer_folder)
  scorer = ClipScorer.from_pretrained(args.clip, tokenizer_folder)  # load it first: fail before hours of sampling
  pipe = diffusion_jax.from_pretrained(args.pretrained, dtype=args.dtype, scheduler=args.scheduler)
  settings = {"pretrained": os.path.abspath(args.pretrained), "dtype": args.dtype,
              "scheduler": pipe.scheduler.CLASS_NAME, "clip": os.path.abspath(args.clip)}
  metrics = run_benchmark(args.out, scorer, pipe=pipe, subset=args.subset, num_seeds=args.seeds,
                          attend_and_excite=not args.no_attend_and_excite, num_inference_steps=args.steps,
                          guidance_scale=args.guidance_scale, batch_size=args.batch_size,
                          max_prompts=args.max_prompts, settings=settings, metrics_only=args.metrics_only)
  print(markdown_table(metrics, "plain sampling" if args.no_attend_and_excite else "Attend-and-Excite"))
  return metrics


if __name__ == "__main__":
  main()
