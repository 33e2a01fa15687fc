"""The benchmark's CLIP metrics (diffusion_jax/clip_score.py): the prompt split rule, the 80 ImageNet templates and
their averaging, and the per-image similarities against the same computation done with transformers' CLIPModel,
CLIPTokenizer and CLIPImageProcessor (PIL backend) on a tiny random CLIP folder.

Tolerance: 1e-5 max abs on unit-norm embeddings and on cosine similarities (fp32; measured ~1e-7).
"""
import numpy as np
import pytest

from diffusion_jax.clip_score import split_prompt, template_texts
from diffusion_jax.imagenet_templates import IMAGENET_TEMPLATES

TOL = 1e-5


@pytest.mark.parametrize("prompt, halves", [
    ("a cat and a frog", ("a cat", "a frog")),
    ("a horse with a glasses", ("a horse", "a glasses")),
    ("a monkey and a red car", ("a monkey", "a red car")),
    ("a pink crown and a purple bow", ("a pink crown", "a purple bow")),
    ("a dog with a hat and a cat", ("a dog with a hat", "a cat")),  # " and " takes precedence over " with "
])
def test_split_prompt(prompt, halves):
  assert split_prompt(prompt) == halves


@pytest.mark.parametrize("prompt, match", [("a cat", "neither"), ("a cat and a dog and a frog", "3 parts"),
                                           ("a sandwich", "neither")])
def test_split_prompt_rejects(prompt, match):
  with pytest.raises(ValueError, match=match):
    split_prompt(prompt)


def test_templates():
  assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
  assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES)
  texts = template_texts("a cat and a frog")
  assert len(texts) == 80
  assert texts[0] == "a bad photo of a cat and a frog."            # "a a" -> "a"
  assert "a photo of a cat and a frog." in texts                   # "the a" -> "a" (from "a photo of the {}.")
  assert "a cat and a frog in a video game." in texts              # "a {} in a video game."
  assert "the embroidered a cat and a frog." in texts              # what the official clean-up leaves
  assert template_texts("dog", ("a {}.", "the {}!")) == ["a dog.", "the dog!"]


# ---- parity with the same metric computed through transformers (skipped without the parity extra) --------
@pytest.fixture(scope="module")
def clip_pair(tmp_path_factory):
  pytest.importorskip("torch", reason="the reference is computed with transformers")
  pytest.importorskip("transformers", reason="the reference is computed with transformers")
  import transformers
  from clip_fixtures import write_tiny_clip
  from diffusion_jax.clip_score import ClipScorer
  folder = write_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")
  ref = transformers.CLIPModel.from_pretrained(folder).eval()
  tok = transformers.CLIPTokenizer.from_pretrained(folder)
  return ClipScorer.from_pretrained(folder, batch_size=32), ref, tok


def _ref_text_embedding(ref, tok, text):
  import torch
  batch = tok(template_texts(text), padding="max_length", max_length=77, return_tensors="pt")
  with torch.no_grad():
    e = ref.get_text_features(input_ids=batch.input_ids).pooler_output.numpy().astype(np.float64)
  e /= np.linalg.norm(e, axis=-1, keepdims=True)
  m = e.mean(0)
  return m / np.linalg.norm(m)


def test_template_embedding_matches_transformers(clip_pair):
  scorer, ref, tok = clip_pair
  for text in ("a cat and a frog", "a red car"):
    ours = scorer.template_embedding(text)
    assert ours.shape == (24,) and abs(np.linalg.norm(ours) - 1) < 1e-6
    err = float(np.abs(ours - _ref_text_embedding(ref, tok, text)).max())
    print(f"template embedding {text!r}: max abs error {err:.1e}")
    assert err <= TOL


def test_prompt_scores_match_transformers(clip_pair, tmp_path):
  import torch
  import transformers
  from PIL import Image
  scorer, ref, tok = clip_pair
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (40, 52, 3), dtype=np.uint8) for _ in range(3)]
  paths = []
  for i, im in enumerate(images):  # one path through PNG files, as the benchmark reads them
    paths.append(str(tmp_path / f"{i}.png"))
    Image.fromarray(im).save(paths[-1])
  proc = transformers.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
  with torch.no_grad():
    px = torch.from_numpy(proc(images, return_tensors="np")["pixel_values"])
    img = ref.get_image_features(pixel_values=px).pooler_output.numpy().astype(np.float64)
  img /= np.linalg.norm(img, axis=-1, keepdims=True)
  prompt = "a monkey and a red car"
  want = {"full_prompt": img @ _ref_text_embedding(ref, tok, prompt),
          "first_half": img @ _ref_text_embedding(ref, tok, "a monkey"),
          "second_half": img @ _ref_text_embedding(ref, tok, "a red car")}
  want["min_object"] = np.minimum(want["first_half"], want["second_half"])
  for source in (images, paths):
    got = scorer.prompt_scores(prompt, source)
    errs = {k: float(np.abs(got[k] - want[k]).max()) for k in want}
    print(f"prompt scores max abs errors {errs}")
    assert set(got) == set(want) and max(errs.values()) <= TOL, errs


def test_batching_does_not_change_embeddings(clip_pair):
  scorer, _, _ = clip_pair
  from diffusion_jax.clip_score import ClipScorer
  small = ClipScorer(scorer.model, scorer.variables, scorer.tokenizer, batch_size=3)
  texts = template_texts("a dog")[:7]
  np.testing.assert_allclose(small.text_embeddings(texts), scorer.text_embeddings(texts), atol=1e-6)
