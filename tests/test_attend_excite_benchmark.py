"""Attend-and-Excite benchmark (diffusion_jax/attend_excite_benchmark.py): the 276 prompts and how they are built,
the subject token indices, resuming after a kill without computing any image twice, and the metrics files, on
a tiny random SD folder and a tiny random CLIP folder.
"""
import itertools
import json
import os

import numpy as np
import pytest

from diffusion_jax import attend_excite_benchmark as bench
from diffusion_jax.attend_excite_prompts import (ANIMALS, ANIMAL_OBJECT_PROMPTS, ANIMAL_PROMPTS, COLORS, OBJECTS,
                                                 OBJECT_PROMPTS, PROMPTS, WEARABLES)

# REFERENCE.md section 2, "Benchmark prompts".
REF_ANIMALS = "bear bird cat dog elephant frog horse lion monkey mouse rabbit turtle".split()
REF_OBJECTS = "apple backpack balloon bench bow bowl car chair clock crown glasses suitcase".split()
REF_COLORS = "black blue brown gray green orange pink purple red white yellow".split()


def test_prompt_counts_and_vocabulary():
  assert {k: len(v) for k, v in PROMPTS.items()} == {"animals": 66, "animals_objects": 144, "objects": 66}
  assert len(set(ANIMAL_PROMPTS + ANIMAL_OBJECT_PROMPTS + OBJECT_PROMPTS)) == 276
  assert sorted(ANIMALS) == REF_ANIMALS and sorted(OBJECTS) == REF_OBJECTS and sorted(COLORS) == REF_COLORS
  assert len(bench.subset_prompts("all")) == 276 and len(bench.subset_prompts("objects", max_prompts=2)) == 2


def test_animal_animal_prompts_are_every_pair_once():
  pairs = []
  for p in ANIMAL_PROMPTS:
    first, second = p.split(" and ")
    a, b = first.split(), second.split()
    assert a[0] == b[0] == "a" and len(a) == len(b) == 2 and a[1] in ANIMALS and b[1] in ANIMALS, p
    pairs.append(frozenset((a[1], b[1])))
  assert set(pairs) == {frozenset(c) for c in itertools.combinations(ANIMALS, 2)} and len(pairs) == 66


def test_animal_object_prompts_are_every_animal_with_every_object_once():
  seen = []
  for p in ANIMAL_OBJECT_PROMPTS:
    if " with " in p:  # the three wearables, uncoloured
      first, second = p.split(" with ")
      assert second.split()[1:] in ([w] for w in WEARABLES) and len(second.split()) == 2, p
      obj = second.split()[1]
    else:  # the other nine, one colour
      first, second = p.split(" and ")
      _, color, obj = second.split()
      assert color in COLORS and obj in OBJECTS and obj not in WEARABLES, p
    assert first.split()[0] == "a" and first.split()[1] in ANIMALS, p
    seen.append((first.split()[1], obj))
  assert sorted(seen) == sorted(itertools.product(ANIMALS, OBJECTS))


def test_object_object_prompts_are_every_pair_once_with_a_colour_each():
  pairs = []
  for p in OBJECT_PROMPTS:
    halves = [h.split() for h in p.split(" and ")]
    for art, color, obj in halves:
      assert art == "a" and color in COLORS and obj in OBJECTS, p
    pairs.append(frozenset(h[2] for h in halves))
  assert set(pairs) == {frozenset(c) for c in itertools.combinations(OBJECTS, 2)} and len(pairs) == 66


def test_subject_words():
  assert bench.subject_words("a cat and a frog") == ("cat", "frog")
  assert bench.subject_words("a horse with a glasses") == ("horse", "glasses")
  assert bench.subject_words("a pink crown and a purple bow") == ("crown", "bow")


def test_subject_token_indices_from_a_get_indices_table():
  table = lambda p: {i: t for i, t in enumerate(["<|startoftext|>"] + [w + "</w>" for w in p.split()]
                                                  + ["<|endoftext|>"])}
  assert bench.subject_token_indices("a cat and a frog", table) == [2, 5]
  assert bench.subject_token_indices("a monkey and a red car", table) == [2, 6]
  assert bench.subject_token_indices("a pink crown and a purple bow", table) == [3, 7]
  assert bench.subject_token_indices("a horse with a glasses", table) == [2, 5]
  assert bench.subject_token_indices("a dog and a dog", table) == [2, 5]  # a repeated noun: two positions
  split = lambda p: {0: "<|startoftext|>", 1: "a</w>", 2: "back", 3: "pack</w>", 4: "and</w>", 5: "a</w>",
                     6: "cat</w>"}
  with pytest.raises(ValueError, match="'backpack' .* not a single token"):
    bench.subject_token_indices("a backpack and a cat", split)


# ---- generation and resume with a fake sampler (no model) ------------------------------------------------
class FakeSampler:
  """Deterministic 8 x 8 images from (prompt, seed); records every image it computes; can die after n calls."""

  def __init__(self, die_after=None):
    self.computed, self.indices, self.calls, self.die_after = [], {}, 0, die_after

  def __call__(self, prompts, token_indices, seeds):
    if self.die_after is not None and self.calls >= self.die_after:
      raise KeyboardInterrupt("simulated kill")
    self.calls += 1
    out = []
    for i, (p, s) in enumerate(zip(prompts, seeds)):
      self.computed.append((p, s))
      if token_indices is not None:
        self.indices[p] = token_indices[i]
      out.append(np.random.default_rng([s, len(p)]).random((8, 8, 3)))
    return np.stack(out)


def _table(prompt):
  return {i: t + "</w>" for i, t in enumerate(["<|startoftext|>"] + prompt.split())}


def test_resume_after_a_kill_computes_every_image_once(tmp_path):
  out = str(tmp_path / "bench")
  run = lambda sampler, subset, seeds: bench.run_benchmark(
      out, None, subset=subset, num_seeds=seeds, max_prompts=2, batch_size=3, sample_fn=sampler,
      get_indices=_table, progress=False)
  first = FakeSampler()
  run(first, "animals", 2)  # 2 prompts x 2 seeds
  assert sorted(first.computed) == sorted(itertools.product(ANIMAL_PROMPTS[:2], range(2)))
  assert first.indices == {ANIMAL_PROMPTS[0]: [2, 5], ANIMAL_PROMPTS[1]: [2, 5]}
  png = bench.image_path(out, ANIMAL_PROMPTS[0], 0)
  stamp = os.stat(png).st_mtime_ns

  killed = FakeSampler(die_after=2)  # the whole benchmark with more seeds, killed after two batches
  with pytest.raises(KeyboardInterrupt):
    run(killed, "all", 3)
  assert len(killed.computed) == 6
  # A kill while a PNG was being written leaves a temporary file, never a final name.
  stale = bench.image_path(out, OBJECT_PROMPTS[1], 2) + ".tmp999"
  os.makedirs(os.path.dirname(stale), exist_ok=True)
  open(stale, "wb").write(b"partial")

  resumed = FakeSampler()
  run(resumed, "all", 3)
  done = first.computed + killed.computed + resumed.computed
  want = [(p, s) for _, p in bench.subset_prompts("all", 2) for s in range(3)]
  assert sorted(done) == sorted(want) and len(done) == len(set(done)) == 18  # each image exactly once
  assert os.stat(png).st_mtime_ns == stamp
  assert resumed.indices[ANIMAL_OBJECT_PROMPTS[1]] == [2, 5] and resumed.indices[OBJECT_PROMPTS[1]] == [3, 7]
  for p, s in want:
    with open(bench.image_path(out, p, s), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"

  nothing = FakeSampler()
  run(nothing, "all", 3)
  assert nothing.computed == []


def test_resume_refuses_other_settings(tmp_path):
  out = str(tmp_path / "bench")
  bench.run_benchmark(out, None, subset="objects", num_seeds=1, max_prompts=1, sample_fn=FakeSampler(),
                      get_indices=_table, progress=False)
  with pytest.raises(ValueError, match="attend_and_excite"):
    bench.run_benchmark(out, None, subset="objects", num_seeds=1, max_prompts=1, sample_fn=FakeSampler(),
                        attend_and_excite=False, progress=False)


def test_non_finite_images_are_not_saved(tmp_path):
  out = str(tmp_path / "bench")
  nan_sampler = lambda prompts, idx, seeds: np.full((len(prompts), 8, 8, 3), np.nan, np.float32)
  with pytest.raises(FloatingPointError, match="non-finite"):
    bench.run_benchmark(out, None, subset="animals", num_seeds=1, max_prompts=1, sample_fn=nan_sampler,
                        get_indices=_table, progress=False)
  assert not os.path.exists(bench.image_path(out, ANIMAL_PROMPTS[0], 0))


# ---- the tiny random pipeline and CLIP --------------------------------------------------------------------
# Skipped without the parity extra (the tiny folders are written with diffusers / transformers).
from diffusion_fixtures import tiny_sd1  # noqa: E402,F401  (fixture)

STEPS = 2


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
  pytest.importorskip("transformers", reason="the tiny CLIP folder is written with transformers")
  from clip_fixtures import write_tiny_clip
  return write_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def test_benchmark_on_tiny_models(tiny_sd1, tiny_clip, tmp_path, fast_compile):
  """Attend-and-Excite mode through an injected sampler (the tiny pipeline's plain sampling, since this
  Pipeline may not take token_indices yet) with indices from its tokenizer; then the CLI's plain mode."""
  import diffusion_jax
  from diffusion_jax.clip_score import ClipScorer
  pipe = diffusion_jax.from_pretrained(tiny_sd1)
  tok = pipe.tokenizer
  get_indices = lambda p: {i: tok._id_to_token[int(t)]
                           for i, t in enumerate(tok([p]).input_ids[0][:tok([p]).lengths[0]])}
  got_indices, sampled = {}, {}

  def sample(prompts, token_indices, seeds):
    got_indices.update(zip(prompts, map(tuple, token_indices)))
    images = pipe(prompts, seeds=seeds, num_inference_steps=STEPS)
    sampled.update(zip(zip(prompts, seeds), images))
    return images

  scorer = ClipScorer.from_pretrained(tiny_clip)
  out = str(tmp_path / "ae")
  metrics = bench.run_benchmark(out, scorer, subset="all", num_seeds=2, max_prompts=1, batch_size=3,
                                num_inference_steps=STEPS, sample_fn=sample, get_indices=get_indices,
                                progress=False)
  assert got_indices == {ANIMAL_PROMPTS[0]: (2, 5), ANIMAL_OBJECT_PROMPTS[0]: (2, 5), OBJECT_PROMPTS[0]: (3, 7)}
  with open(os.path.join(out, "metrics_all.json")) as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(metrics))
  assert set(saved) == {"settings", "subset", "num_seeds", "generation", "subsets", "prompts"}
  assert set(saved["subsets"]) == {"animals", "animals_objects", "objects"}
  for name, agg in saved["subsets"].items():
    assert set(agg) == {"num_prompts", "num_images", "full_prompt_similarity", "min_object_similarity"}
    assert (agg["num_prompts"], agg["num_images"]) == (1, 2)
    entry = saved["prompts"][PROMPTS[name][0]]
    assert set(entry) == {"subset", "seeds", "token_indices", "full_prompt", "first_half", "second_half",
                          "min_object"}
    assert entry["min_object"] == [min(a, b) for a, b in zip(entry["first_half"], entry["second_half"])]
    assert agg["full_prompt_similarity"] == pytest.approx(np.mean(entry["full_prompt"]))
    assert agg["min_object_similarity"] == pytest.approx(np.mean(entry["min_object"]))
    assert all(-1 <= x <= 1 for x in entry["full_prompt"])
  table = open(os.path.join(out, "metrics_all.md")).read()
  assert "| Animal-Animal | 1 | 2 |" in table and "minimum-object similarity" in table
  assert saved["generation"]["images_computed"] == 6
  for name in PROMPTS:
    assert os.path.getsize(os.path.join(out, f"grid_{name}.png")) > 0

  plain = str(tmp_path / "plain")
  cli = bench.main(["--pretrained", tiny_sd1, "--clip", tiny_clip, "--subset", "objects", "--seeds", "3",
                    "--max-prompts", "1", "--out", plain, "--no-attend-and-excite", "--steps", str(STEPS),
                    "--batch-size", "3"])
  assert cli["settings"]["attend_and_excite"] is False and cli["subsets"]["objects"]["num_images"] == 3
  from PIL import Image
  read = lambda folder, p, s: np.asarray(Image.open(bench.image_path(folder, p, s))).astype(int)
  for (p, s), image in sampled.items():  # the PNGs are the sampler's images, rounded as diffusers rounds
    assert np.abs(read(out, p, s) - np.round(image * 255)).max() == 0
  for s in range(2):  # the CLI's own pipeline call draws the same plain-sampling images for the same seeds
    np.testing.assert_array_equal(read(plain, OBJECT_PROMPTS[0], s), read(out, OBJECT_PROMPTS[0], s))


def test_attend_and_excite_needs_get_indices(tmp_path):
  with pytest.raises(ValueError, match="--no-attend-and-excite"):
    bench.run_benchmark(str(tmp_path / "b"), None, pipe=object(), subset="animals", num_seeds=1, progress=False)
