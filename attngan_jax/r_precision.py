"""R-precision of text-image matching with the DAMSM (AttnGAN paper Sec. 5; the common DM-GAN protocol).

For every image: its ground-truth caption plus `num_mismatch` (99) captions describing other content are ranked
by the cosine of the DAMSM global image vector with each sentence vector; R = 1, so the score is top-1
accuracy. "Other content" means a different `class_ids` entry: the bird class for CUB, the object set for
shapes, the image itself for COCO (the loaders give every COCO image its own id). Images are split into
`num_folds` (10) folds, each fold's accuracy is computed, and the mean and standard deviation over folds are
reported. Everything is deterministic from `seed`.

Ties count as misses (the ground truth must score strictly higher than every mismatch), so an encoder that
maps everything to one vector scores 0, not 100.

`r_precision` works on arrays of vectors; `DAMSMScorer` encodes images (real or generated, an array or an
iterator of batches) and captions with trained DAMSM encoders and scores them:

    scorer = DAMSMScorer.from_export("runs/damsm_shapes/damsm", mesh=mesh)
    result = scorer.score(images, captions, class_ids)   # {"r_precision", "r_precision_std", ...}
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from attngan_jax.text import TextTransform
from t2i_common import parallel

_CHUNK = 1024  # items scored at once: bounds the [chunk, 1 + num_mismatch, D] gather


def r_precision_config() -> ml_collections.ConfigDict:
  """Protocol options (config.eval.r_precision)."""
  return ml_collections.ConfigDict({
      "num_mismatch": 99,
      "num_folds": 10,
      "seed": 0,
  })


def sample_mismatches(class_ids: np.ndarray, num_mismatch: int, rng: np.random.Generator) -> np.ndarray:
  """int64 [N, num_mismatch]: for each item, distinct indices of items of another class.

  Raises ValueError when some item has fewer than `num_mismatch` items of other classes.
  """
  class_ids = np.asarray(class_ids)
  if class_ids.ndim != 1:
    raise ValueError(f"class_ids must be one id per item [N], got shape {class_ids.shape}.")
  n = len(class_ids)
  # Sorting by class puts each class in one contiguous block; the pool of an item is everything outside its
  # block, so a position p in [0, n - block) maps to order[p] before the block and order[p + block] after it.
  order = np.argsort(class_ids, kind="stable")
  classes, starts, counts = np.unique(class_ids[order], return_index=True, return_counts=True)
  if n - counts.max() < num_mismatch:
    worst = classes[np.argmax(counts)]
    raise ValueError(
        f"R-precision needs {num_mismatch} mismatching captions per image, but class {worst} has "
        f"{counts.max()} of the {n} items, leaving only {n - counts.max()} of other classes. Score more images, "
        f"or lower num_mismatch (config.eval.r_precision.num_mismatch).")
  block = np.searchsorted(classes, class_ids)
  start, size = starts[block], counts[block]
  out = np.empty((n, num_mismatch), np.int64)
  for i in range(n):
    out[i] = rng.choice(n - size[i], num_mismatch, replace=False)
  out = np.where(out < start[:, None], out, out + size[:, None])
  return order[out]


def _unit(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def r_precision(image_vecs: np.ndarray, sent_vecs: np.ndarray, class_ids: Optional[np.ndarray] = None, *,
                num_mismatch: int = 99, num_folds: int = 10, seed: int = 0) -> dict[str, Any]:
  """R-precision (R = 1) of matched pairs (image_vecs[i], sent_vecs[i]).

  image_vecs, sent_vecs: [N, D] global DAMSM vectors; class_ids: [N] (None: every item its own class).
  Returns {"r_precision", "r_precision_std" (over folds, in [0, 1]), "folds" (per-fold accuracies),
  "num_images", "num_mismatch", "num_folds", "seed"}; "hits" [N] bool per item.
  """
  image_vecs, sent_vecs = np.asarray(image_vecs), np.asarray(sent_vecs)
  if image_vecs.ndim != 2 or image_vecs.shape != sent_vecs.shape:
    raise ValueError(f"image_vecs and sent_vecs must be matched [N, D] arrays, got {image_vecs.shape} and "
                     f"{sent_vecs.shape}.")
  n = image_vecs.shape[0]
  if not np.all(np.isfinite(image_vecs)) or not np.all(np.isfinite(sent_vecs)):
    raise ValueError("image or sentence vectors contain NaN/inf: the encoders diverged or the inputs are broken.")
  class_ids = np.arange(n) if class_ids is None else np.asarray(class_ids)
  if class_ids.shape != (n,):
    raise ValueError(f"class_ids must have shape ({n},), got {class_ids.shape}.")
  if num_mismatch < 1:
    raise ValueError(f"num_mismatch must be >= 1, got {num_mismatch}.")
  if not 1 <= num_folds <= n:
    raise ValueError(f"num_folds must be in [1, number of images = {n}], got {num_folds}.")
  rng = np.random.default_rng(seed)
  mismatches = sample_mismatches(class_ids, num_mismatch, rng)
  img, sent = _unit(image_vecs), _unit(sent_vecs)
  hits = np.empty((n,), bool)
  for lo in range(0, n, _CHUNK):
    hi = min(n, lo + _CHUNK)
    true = np.sum(img[lo:hi] * sent[lo:hi], axis=-1)                       # [c]
    wrong = np.einsum("cd,cmd->cm", img[lo:hi], sent[mismatches[lo:hi]])   # [c, num_mismatch]
    hits[lo:hi] = true > wrong.max(axis=1)
  # Folds over a seeded permutation, so a dataset sorted by class does not give class-pure folds.
  folds = np.array_split(rng.permutation(n), num_folds)
  accs = np.array([hits[f].mean() for f in folds])
  return {"r_precision": float(accs.mean()), "r_precision_std": float(accs.std()), "folds": accs.tolist(),
          "num_images": int(n), "num_mismatch": int(num_mismatch), "num_folds": int(num_folds), "seed": int(seed),
          "hits": hits}


def summary(result: dict[str, Any]) -> str:
  """"R-precision 67.82 +- 4.43 % (N images, 99 mismatches, 10 folds)"."""
  return (f"R-precision {100 * result['r_precision']:.2f} +- {100 * result['r_precision_std']:.2f} % "
          f"({result['num_images']} images, {result['num_mismatch']} mismatches, {result['num_folds']} folds)")


# ----------------------------------------------------------------------------------------------------------------
# Encoding images and captions.

def to_model_range(images: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] or float [-1, 1] images -> float32 [-1, 1] (what the DAMSM image encoder takes)."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be [N, H, W, 3] RGB, got shape {images.shape}.")
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 127.5 - 1.0
  if not np.issubdtype(images.dtype, np.floating):
    raise TypeError(f"images must be uint8 or float in [-1, 1], got dtype {images.dtype}.")
  lo, hi = float(images.min(initial=0.0)), float(images.max(initial=0.0))
  if lo < -1.01 or hi > 1.01:
    raise ValueError(f"float images must lie in [-1, 1] (the generator's tanh range), got [{lo:.3g}, {hi:.3g}].")
  return images.astype(np.float32)


def _batches(images: np.ndarray | Iterable[np.ndarray], batch_size: int) -> Iterable[np.ndarray]:
  """Re-batches an array or an iterator of arrays into chunks of at most `batch_size`."""
  if isinstance(images, np.ndarray) or hasattr(images, "__array__") and not hasattr(images, "__next__"):
    images = [np.asarray(images)]
  buffer: list[np.ndarray] = []
  held = 0
  for chunk in images:
    chunk = np.asarray(chunk)
    buffer.append(chunk)
    held += len(chunk)
    while held >= batch_size:
      joined = np.concatenate(buffer)
      yield joined[:batch_size]
      buffer, held = [joined[batch_size:]], held - batch_size
  if held:
    yield np.concatenate(buffer)


def replicated_outputs(fn: Callable, mesh: jax.sharding.Mesh, batches: Iterable[dict], *args: Any,
                       max_batches: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Runs jitted `fn(*args, global_batch)` over process-local numpy batches; yields its outputs as numpy on
  every process (outputs replicated, so each process sees the whole global batch's results).

  `fn` must be jax.jit(..., out_shardings=replicated(mesh)). max_batches: stop after that many (0 = all).
  """
  for i, batch in enumerate(batches):
    if max_batches and i >= max_batches:
      break
    out = fn(*args, parallel.global_batch(batch, mesh))
    yield {k: np.asarray(v) for k, v in out.items()}


class DAMSMScorer:
  """Encodes images and captions with DAMSM encoders (data parallel over `mesh`) and scores R-precision.

  image_fn(image_variables, images [B, H, W, 3] in [-1, 1]) -> global vectors [B, D];
  text_fn(text_variables, tokens [B, T], lengths [B]) -> sentence vectors [B, D]. Both run jitted with the
  batch sharded over the mesh and replicated outputs, so every process gets every vector. Arrays given to
  encode_images / encode_captions / score must be the same on every process; batches are padded to
  `batch_size` (one compiled shape) and the padding dropped again. `score_split` reads a dataset split through
  the loader instead (each process its share).
  `image_size`: images of another size are resized (bilinear, antialiased) to it first, e.g. 256 px generated
  images for a 64 px shapes encoder; None for the Inception encoder, which resizes to 299 itself.
  """

  def __init__(self, image_fn: Callable, text_fn: Callable, variables: dict[str, Any],
               text_transform: TextTransform, *, batch_size: int = 50, mesh: Optional[jax.sharding.Mesh] = None,
               image_size: Optional[int] = None):
    self.mesh = mesh if mesh is not None else parallel.create_mesh(None)
    if batch_size % self.mesh.size:
      raise ValueError(f"batch_size={batch_size} must be a multiple of the mesh size {self.mesh.size}.")
    if set(variables) != {"image", "text"}:
      raise ValueError(f"variables must be {{'image': ..., 'text': ...}}, got keys {sorted(variables)}.")
    self.batch_size, self.image_size, self.text_transform = batch_size, image_size, text_transform
    out = parallel.replicated(self.mesh)
    self.variables = jax.device_put(variables, out)
    self._image_fn, self._text_fn = image_fn, text_fn
    self._encode_images = jax.jit(lambda v, x: image_fn(v, self._resize(x)), out_shardings=out)
    self._encode_text = jax.jit(text_fn, out_shardings=out)
    self._encode_batch = jax.jit(self._batch_vectors, out_shardings=out)

  @classmethod
  def from_export(cls, damsm_dir: str, **kwargs: Any) -> "DAMSMScorer":
    """From the encoders pretrain_damsm exports (<damsm_dir>/{text_encoder,image_encoder}, convert_torch format).

    kwargs: batch_size, mesh, image_size, words_num (longer captions keep their first words_num words; default:
    the training run's, else 18), vocab (a Vocabulary; default: the one saved beside the text encoder).
    """
    text_dir, image_dir = os.path.join(damsm_dir, "text_encoder"), os.path.join(damsm_dir, "image_encoder")
    return cls.from_dirs(text_dir, image_dir, **kwargs)

  @classmethod
  def from_dirs(cls, text_dir: str, image_dir: str, **kwargs: Any) -> "DAMSMScorer":
    """From converted / exported encoder directories (e.g. the released DAMSM via attngan_jax.convert_torch)."""
    from attngan_jax import convert_torch
    words_num = kwargs.pop("words_num", None) or _exported_option(text_dir, "words_num") or 18
    vocab = kwargs.pop("vocab", None)
    text_model, text_vars, saved_vocab = convert_torch.load_text_encoder(text_dir)
    image_model, image_vars = convert_torch.load_image_encoder(image_dir)
    vocab = vocab or saved_vocab
    if vocab is None:
      raise ValueError(f"{text_dir!r} has no vocab.json: pass vocab=Vocabulary.load_json(...) or "
                       "Vocabulary.from_captions_pickle(...)[0] (the vocabulary the text encoder was trained with).")
    if kwargs.get("image_size") is None and image_model.backbone != "inception_v3":
      kwargs["image_size"] = _exported_option(image_dir, "image_size")
    return cls(lambda v, x: image_model.apply(v, x)[1], lambda v, t, n: text_model.apply(v, t, n)[1],
               {"image": image_vars, "text": text_vars}, TextTransform(vocab, words_num), **kwargs)

  def _resize(self, images: jax.Array) -> jax.Array:
    if self.image_size and images.shape[1:3] != (self.image_size, self.image_size):
      images = jax.image.resize(images, (images.shape[0], self.image_size, self.image_size, 3), "bilinear",
                                antialias=True)
    return images

  def _batch_vectors(self, variables: dict, batch: dict) -> dict:
    return {"image_vec": self._image_fn(variables["image"], self._resize(batch["image"])),
            "sent_vec": self._text_fn(variables["text"], batch["tokens"], batch["length"]),
            "class_id": batch["class_id"], "mask": batch["mask"]}

  def _pad_run(self, fn: Callable, arrays: Sequence[np.ndarray], variables: Any) -> np.ndarray:
    n = len(arrays[0])
    pad = self.batch_size - n
    if pad:
      arrays = [np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) for a in arrays]
    p, count = jax.process_index(), jax.process_count()
    local = self.batch_size // count
    batch = parallel.global_batch({str(k): a[p * local:(p + 1) * local] for k, a in enumerate(arrays)},
                                  self.mesh)
    return np.asarray(fn(variables, *(batch[str(k)] for k in range(len(arrays)))))[:n]

  def encode_images(self, images: np.ndarray | Iterable[np.ndarray]) -> np.ndarray:
    """Global image vectors [N, D] of uint8 or [-1, 1] float images (an array or an iterator of batches)."""
    out = [self._pad_run(self._encode_images, [to_model_range(chunk)], self.variables["image"])
           for chunk in _batches(images, self.batch_size)]
    if not out:
      raise ValueError("no images to encode.")
    return np.concatenate(out)

  def encode_captions(self, captions: Sequence[str]) -> np.ndarray:
    """Sentence vectors [N, D] of raw caption strings."""
    if isinstance(captions, str):
      raise TypeError("encode_captions takes a list of captions, not one string.")
    captions = list(captions)
    if not captions:
      raise ValueError("no captions to encode.")
    out = []
    for lo in range(0, len(captions), self.batch_size):
      enc = self.text_transform.batch(captions[lo:lo + self.batch_size])
      out.append(self._pad_run(self._encode_text, [enc["tokens"], enc["length"]], self.variables["text"]))
    return np.concatenate(out)

  def score(self, images: np.ndarray | Iterable[np.ndarray], captions: Sequence[str],
            class_ids: Optional[Sequence[int]] = None, **protocol: Any) -> dict[str, Any]:
    """R-precision of images[i] against captions[i] (e.g. the caption each image was generated from).

    protocol: num_mismatch, num_folds, seed (see `r_precision`).
    """
    image_vecs = self.encode_images(images)
    sent_vecs = self.encode_captions(captions)
    if len(image_vecs) != len(sent_vecs):
      raise ValueError(f"{len(image_vecs)} images but {len(sent_vecs)} captions: pass one caption per image.")
    return r_precision(image_vecs, sent_vecs, None if class_ids is None else np.asarray(class_ids), **protocol)

  def split_vectors(self, data_config: ml_collections.ConfigDict, split: str = "test", *, seed: int = 0,
                    max_batches: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image vectors, sentence vectors, class ids) of a dataset split, one caption per image drawn from seed."""
    from t2i_common.data.loader import iterate_eval
    batches = iterate_eval(data_config, split, self.batch_size, self.text_transform, seed=seed)
    parts = list(replicated_outputs(self._encode_batch, self.mesh, batches, self.variables,
                                    max_batches=max_batches))
    return tuple(np.concatenate([p[k][p["mask"]] for p in parts]) for k in ("image_vec", "sent_vec", "class_id"))

  def score_split(self, data_config: ml_collections.ConfigDict, split: str = "test", *, seed: int = 0,
                  max_batches: int = 0, **protocol: Any) -> dict[str, Any]:
    """R-precision of a split's real images against their own captions."""
    image_vecs, sent_vecs, class_ids = self.split_vectors(data_config, split, seed=seed, max_batches=max_batches)
    return r_precision(image_vecs, sent_vecs, class_ids, **protocol)


def _exported_option(model_dir: str, key: str) -> Optional[int]:
  """An integer option pretrain_damsm wrote into an exported encoder's config.json (None if absent)."""
  path = os.path.join(model_dir, "config.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    value = json.load(f).get(key)
  return int(value) if value else None

