"""CLIP image-text similarities of Attend-and-Excite's benchmark (Chefer et al. 2023, Sec. 5, with CLIP ViT-B/16).

    scorer = ClipScorer.from_pretrained("clip-vit-base-patch16")     # a transformers CLIPModel folder
    scores = scorer.prompt_scores("a cat and a frog", images)        # images: uint8 [N, H, W, 3] or PNG paths
    scores["full_prompt"], scores["min_object"]                      # [N] cosine similarities each

The metrics, as the official repo's metrics/compute_clip_similarity.py computes them:
- full-prompt similarity: cosine(image embedding, text embedding of the prompt);
- minimum-object similarity: the prompt split at " and " (else at " with ") into two halves ("a cat", "a frog";
  "a horse", "a crown"), the smaller of the two halves' similarities;
- every text embedding is the average over CLIP's 80 ImageNet templates (imagenet_templates.py) of the
  normalised embeddings of the filled-in templates, normalised again; after filling in, "a a" and "the a" are
  replaced by "a" (so "a photo of the {}." with "a cat" reads "a photo of a cat.").

Image preprocessing is CLIP's (transformers' CLIPImageProcessor, OpenAI's `preprocess`): shortest side resized
to the tower's image size with PIL's bicubic filter (the resampler both use), centre crop, /255, CLIP mean/std.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.imagenet_templates import IMAGENET_TEMPLATES
from diffusion_jax.models.clip_model import CLIPModel, load_clip, normalize
from diffusion_jax.tokenizer import CLIPTokenizer, has_tokenizer

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ImageLike = Union[np.ndarray, str, os.PathLike, Any]  # uint8 HWC array, float HWC in [0, 1], a path or a PIL image


# ---- prompt halves and templates -------------------------------------------------------------------------
def split_prompt(prompt: str) -> tuple[str, str]:
  """The two halves of a two-subject prompt: split at " and ", or else at " with " (the official rule).

  Raises ValueError for a prompt with neither, or with more than two parts (the official script would silently
  keep the first two).
  """
  for sep in (" and ", " with "):
    if sep in prompt:
      parts = prompt.split(sep)
      if len(parts) != 2:
        raise ValueError(f"prompt {prompt!r} has {len(parts)} parts at {sep!r}; the minimum-object similarity "
                         "needs exactly two halves.")
      return parts[0], parts[1]
  raise ValueError(f"prompt {prompt!r} contains neither ' and ' nor ' with '; the minimum-object similarity "
                   "splits two-subject prompts such as 'a cat and a frog' or 'a horse with a crown'.")


def template_texts(text: str, templates: Sequence[str] = IMAGENET_TEMPLATES) -> list[str]:
  """Each template filled with `text`, then "a a" -> "a" and "the a" -> "a" (the official clean-up)."""
  return [t.format(text).replace("a a", "a").replace("the a", "a") for t in templates]


# ---- image preprocessing ---------------------------------------------------------------------------------
def load_image(image: ImageLike) -> np.ndarray:
  """uint8 RGB [H, W, 3] from a path, a PIL image, a uint8 array or a float array in [0, 1]."""
  from PIL import Image
  if isinstance(image, (str, os.PathLike)):
    with Image.open(image) as im:
      return np.asarray(im.convert("RGB"))
  if isinstance(image, Image.Image):
    return np.asarray(image.convert("RGB"))
  arr = np.asarray(image)
  if arr.ndim != 3 or arr.shape[-1] != 3:
    raise ValueError(f"an image must be [H, W, 3] RGB; got shape {arr.shape}.")
  if arr.dtype == np.uint8:
    return arr
  if not np.issubdtype(arr.dtype, np.floating):
    raise ValueError(f"image arrays must be uint8 or float in [0, 1]; got {arr.dtype}.")
  if not np.isfinite(arr).all():
    raise ValueError("the image holds NaN or inf values.")
  return to_uint8(arr)


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Float images in [0, 1] -> uint8, rounded as diffusers' numpy_to_pil (what a saved PNG holds)."""
  return np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)


def preprocess_images(images: Iterable[ImageLike], size: int = 224, crop_size: Optional[int] = None,
                      mean: Sequence[float] = OPENAI_CLIP_MEAN, std: Sequence[float] = OPENAI_CLIP_STD
                      ) -> np.ndarray:
  """CLIP preprocessing -> float32 NHWC [N, crop, crop, 3], as transformers' CLIPImageProcessor (PIL backend).

  The shortest side becomes `size` (the other int(size * long / short)), bicubic with PIL on the uint8 image; then
  a centre crop of crop_size (default size) with the top-left corner at ((h - crop) // 2, (w - crop) // 2), /255
  and (x - mean) / std per channel.
  """
  from PIL import Image
  crop = crop_size or size
  mean32, std32 = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  out = []
  for image in images:
    arr = load_image(image)
    h, w = arr.shape[:2]
    short, long = min(h, w), max(h, w)
    new_long = int(size * long / short)
    new_h, new_w = (size, new_long) if h <= w else (new_long, size)
    if (new_h, new_w) != (h, w):
      arr = np.asarray(Image.fromarray(arr).resize((new_w, new_h), resample=Image.BICUBIC))
    if new_h < crop or new_w < crop:
      raise ValueError(f"image {h} x {w} resized to {new_h} x {new_w} is smaller than the crop {crop}.")
    top, left = (new_h - crop) // 2, (new_w - crop) // 2
    arr = arr[top:top + crop, left:left + crop].astype(np.float32) * np.float32(1 / 255)
    out.append((arr - mean32) / std32)
  if not out:
    raise ValueError("no images to preprocess.")
  return np.stack(out).astype(np.float32)


# ---- the scorer ------------------------------------------------------------------------------------------
class ClipScorer:
  """CLIP text and image embeddings (normalised) and the benchmark's similarities; see the module docstring.

  batch_size: texts / images per compiled call (the last batch is padded, so one program serves every call).
  """

  def __init__(self, model: CLIPModel, variables: Any, tokenizer: CLIPTokenizer, *, batch_size: int = 64,
               image_mean: Sequence[float] = OPENAI_CLIP_MEAN, image_std: Sequence[float] = OPENAI_CLIP_STD):
    if tokenizer.model_max_length > model.config.text.max_position_embeddings:
      raise ValueError(f"the tokenizer pads to {tokenizer.model_max_length} tokens but the CLIP text tower has "
                       f"{model.config.text.max_position_embeddings} positions.")
    self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
    self.variables = jax.device_put(variables)
    self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
    self._text_fn = jax.jit(lambda v, ids: normalize(model.apply(v, ids, method=CLIPModel.get_text_features)))
    self._image_fn = jax.jit(lambda v, px: normalize(model.apply(v, px, method=CLIPModel.get_image_features)))
    self._template_cache: dict[str, np.ndarray] = {}

  @classmethod
  def from_pretrained(cls, folder: str, tokenizer_folder: Optional[str] = None, *, dtype: Any = jnp.float32,
                      batch_size: int = 64) -> "ClipScorer":
    """A transformers CLIPModel folder; the tokenizer (vocab.json + merges.txt, or tokenizer.json) from
    tokenizer_folder, default the model folder (the hub's openai/clip-vit-* folders hold both)."""
    tokenizer_folder = tokenizer_folder or folder
    if not has_tokenizer(tokenizer_folder):
      raise FileNotFoundError(f"no CLIP tokenizer (vocab.json + merges.txt, or tokenizer.json) in "
                              f"{tokenizer_folder!r}; pass the folder of one (any CLIP BPE tokenizer folder, e.g. a "
                              "Stable Diffusion folder's tokenizer/).")
    model, variables = load_clip(folder, dtype)
    tokenizer = CLIPTokenizer.from_folder(tokenizer_folder)
    return cls(model, variables, tokenizer, batch_size=batch_size)

  @property
  def image_size(self) -> int:
    return self.model.config.vision.image_size

  def _batched(self, fn, inputs: np.ndarray) -> np.ndarray:
    outs = []
    for start in range(0, len(inputs), self.batch_size):
      chunk = inputs[start:start + self.batch_size]
      n = len(chunk)
      if n < self.batch_size:
        chunk = np.concatenate([chunk, np.zeros((self.batch_size - n,) + chunk.shape[1:], chunk.dtype)])
      outs.append(np.asarray(fn(self.variables, chunk))[:n])
    out = np.concatenate(outs)
    if not np.isfinite(out).all():
      raise FloatingPointError("CLIP embeddings are not finite; check the CLIP weights and dtype.")
    return out

  def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
    """Normalised text embeddings [N, projection_dim] (float32)."""
    ids = self.tokenizer(list(texts)).input_ids
    return self._batched(self._text_fn, ids)

  def image_embeddings(self, images: Iterable[ImageLike]) -> np.ndarray:
    """Normalised image embeddings [N, projection_dim] of uint8 / float images or image paths."""
    pixels = preprocess_images(images, self.image_size, mean=self.image_mean, std=self.image_std)
    return self._batched(self._image_fn, pixels)

  def template_embedding(self, text: str) -> np.ndarray:
    """Mean of the normalised embeddings of the 80 filled-in ImageNet templates, normalised again [P]."""
    if text not in self._template_cache:
      mean = self.text_embeddings(template_texts(text)).mean(axis=0)
      self._template_cache[text] = mean / np.linalg.norm(mean)
    return self._template_cache[text]

  def prompt_scores(self, prompt: str, images: Union[np.ndarray, Sequence[ImageLike]],
                    image_embeddings: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
    """Per-image similarities with the prompt and its two halves (see the module docstring):
    {"full_prompt", "first_half", "second_half", "min_object"}, each [N] float64."""
    first, second = split_prompt(prompt)
    emb = self.image_embeddings(images) if image_embeddings is None else np.asarray(image_embeddings)
    sims = {name: emb.astype(np.float64) @ self.template_embedding(text).astype(np.float64)
            for name, text in (("full_prompt", prompt), ("first_half", first), ("second_half", second))}
    sims["min_object"] = np.minimum(sims["first_half"], sims["second_half"])
    return sims
