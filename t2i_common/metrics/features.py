"""Inception-v3 features of many images, for FID and the Inception score.

`InceptionExtractor` runs a converted Inception (attngan_jax.convert_torch output: `fid_inception` for pytorch-fid's
FID weights, `inception` for torchvision-layout classifiers, `stackgan_inception` for StackGAN's CUB classifier)
jitted and data-parallel over a mesh, with the input path of the code that defined the metric: uint8 images (or
floats in [0, 1], rounded to uint8 first as saving a PNG would, so in-memory samples score like the same samples
written to disk) -> pytorch-fid's bilinear resize to 299 without antialiasing -> [-1, 1]; for stackgan_inception
StackGAN's inception_score.py path instead (PIL's 8-bit bilinear resize, bit-exact -> x / 127.5 - 1).
`extract_features` streams an array or an iterator of batches through it with a progress bar (rate, ETA);
`iter_image_folder` reads a folder of pictures in batches.

    extractor = InceptionExtractor.from_converted("weights/fid_inception", "pool")
    feats = extract_features(iter_image_folder("samples/", 50), extractor)     # [N, 2048] float32
"""
from __future__ import annotations

import functools
import glob
import json
import os
from typing import Any, Callable, Iterable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from attngan_jax.inception import fid_preprocess, stackgan_preprocess
from t2i_common import parallel
from t2i_common.logging import progress, to_uint8

# pytorch-fid's list of picture extensions (fid_score.IMAGE_EXTENSIONS).
IMAGE_EXTENSIONS = ("bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp")
# Backend names reported with every figure: FID and IS depend on the network's weights and structure.
BACKENDS = {"fid_inception": "pytorch-fid-inception (converted)",
            "inception": "torchvision-layout-inception-v3 (converted)",
            "stackgan_inception": "stackgan-cub-inception-v3 (converted TF-slim checkpoint)"}
# "pool": the 2048-d pool3 features (FID); "mixed_6e_pool": Mixed_6e averaged over space, 768-d (pytorch-fid's
# --dims 768); "logits" / "logits_unbiased": class scores (the Inception score); "logits_foreground": the logits
# without column 0, TF-slim's background class (StackGAN's inception_score.py softmaxes logits[:, 1:]).
OUTPUTS = ("pool", "mixed_6e_pool", "logits", "logits_unbiased", "logits_foreground")
# The class scores the Inception score takes from each kind (from_converted's output="class_scores"): the fc output
# without its bias for pytorch-fid's 1008-class TF graph (improved-gan's and torch-fidelity's choice), the 50 bird
# classes for StackGAN's, else logits.
CLASS_SCORES = {"fid_inception": "logits_unbiased", "inception": "logits", "stackgan_inception": "logits_foreground"}
# Input paths (uint8 levels / 255 -> model input): pytorch-fid's, or StackGAN's inception_score.py for its model.
PREPROCESS = {"pytorch_fid": fid_preprocess, "stackgan": stackgan_preprocess}
KIND_PREPROCESS = {"stackgan_inception": "stackgan"}
LOADERS = {"fid_inception": "load_fid_inception", "inception": "load_inception",
           "stackgan_inception": "load_stackgan_inception"}


@functools.partial(jax.jit, static_argnames=("model", "output", "resolution", "mesh", "preprocess"))
def _inception_output(variables: Any, images: jax.Array, *, model: Any, output: str, resolution: int,
                      mesh: jax.sharding.Mesh, preprocess: str = "pytorch_fid") -> jax.Array:
  # One compiled program per (model config, output, batch shape, mesh), shared by every extractor (Flax modules
  # with equal fields are equal and hash alike), so the CLIs and tests that build several compile once.
  # Full float32 convolutions: GPUs would otherwise use TF32 and TPUs bfloat16 passes (errors of ~1e-3 in the
  # features); metrics must not depend on the accelerator. The Inception forward is cheap next to sampling.
  with jax.default_matmul_precision("highest"):
    out = model.apply(variables, PREPROCESS[preprocess](images.astype(jnp.float32) / 255.0, resolution))
  out["mixed_6e_pool"] = jnp.mean(out["mixed_6e"], axis=(1, 2))
  if "logits" in out:
    out["logits_foreground"] = out["logits"][:, 1:]
  if output not in out:
    raise ValueError(f"the Inception has no {output!r} output (it returns {sorted(out)}): logits need a "
                     "model converted with its fc layer (without --no-fc).")
  return jax.lax.with_sharding_constraint(out[output], parallel.replicated(mesh))


class InceptionExtractor:
  """Batches of images -> one Inception output per image (float32 numpy).

  model: a Flax module whose apply(variables, x) returns a dict of outputs for x float [B, 299, 299, 3] in
  [-1, 1] (attngan_jax.inception.InceptionV3).
  output: one of OUTPUTS.
  batch_size: images per jitted call, a multiple of the mesh size; the last batch is padded (one compiled shape).
  backend: the name reported with figures computed from these features.
  preprocess: a key of PREPROCESS, the input path ("pytorch_fid"; "stackgan" for StackGAN's CUB Inception).
  Arrays passed in must be the same on every process (each process feeds its slice of each batch).
  """

  def __init__(self, model: Any, variables: Any, output: str = "pool", *, backend: str,
               batch_size: int = 50, resolution: int = 299, mesh: Optional[jax.sharding.Mesh] = None,
               preprocess: str = "pytorch_fid"):
    if output not in OUTPUTS:
      raise ValueError(f"unknown Inception output {output!r}; choose one of {OUTPUTS}.")
    if preprocess not in PREPROCESS:
      raise ValueError(f"unknown Inception input path {preprocess!r}; choose one of {sorted(PREPROCESS)}.")
    self.preprocess = preprocess
    self.mesh = mesh if mesh is not None else parallel.create_mesh(None)
    if batch_size < 1 or batch_size % self.mesh.size:
      raise ValueError(f"batch_size={batch_size} must be a positive multiple of the mesh size {self.mesh.size}.")
    self.output, self.backend, self.batch_size, self.resolution = output, backend, batch_size, resolution
    self.model = model
    self.variables = jax.device_put(variables, parallel.replicated(self.mesh))

  @classmethod
  def from_converted(cls, path: str, output: str = "pool", *, transform_input: bool = False,
                     **kwargs: Any) -> "InceptionExtractor":
    """From a directory of `python -m attngan_jax.convert_torch --kind fid_inception|inception|stackgan_inception`,
    with the kind's input path (KIND_PREPROCESS).

    output: one of OUTPUTS, or "class_scores" for the logits the Inception score uses with this kind (CLASS_SCORES).

    transform_input: torchvision's ImageNet weights expect ImageNet normalisation (torchvision's
    transform_input=True); pytorch-fid's weights and TF-slim models (StackGAN's) take [-1, 1] as they are.
    kwargs: batch_size, mesh, resolution.
    """
    from attngan_jax import convert_torch
    config_path = os.path.join(path, convert_torch.CONFIG_FILE)
    if not os.path.isfile(config_path):
      raise FileNotFoundError(f"{path!r} is not a converted Inception directory (no {convert_torch.CONFIG_FILE}); "
                              "convert pytorch-fid's pt_inception-2015-12-05-*.pth with python -m "
                              "attngan_jax.convert_torch --kind fid_inception --src FILE --out DIR.")
    with open(config_path) as f:
      kind = json.load(f).get("kind")
    if kind not in LOADERS:
      raise ValueError(f"{path!r} holds a {kind!r}, not an Inception (kind {', '.join(LOADERS)}).")
    model, variables = getattr(convert_torch, LOADERS[kind])(path)
    if output == "class_scores":
      output = CLASS_SCORES[kind]
    if transform_input:
      model = model.clone(transform_input=True)
    backend = BACKENDS[kind] + (" with ImageNet input transform" if transform_input else "")
    if output == "mixed_6e_pool":  # FID of other features is another metric: say so wherever it is reported
      backend += ", 768-d Mixed_6e features"
    kwargs.setdefault("preprocess", KIND_PREPROCESS.get(kind, "pytorch_fid"))
    return cls(model, variables, output, backend=backend, **kwargs)

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """[n, H, W, 3] uint8 (or float in [0, 1]) -> [n, D] float32, any n >= 1, in batches of batch_size."""
    images = to_uint8(images)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be [N, H, W, 3] RGB, got shape {images.shape}.")
    p, count = jax.process_index(), jax.process_count()
    local = self.batch_size // count
    out = []
    for lo in range(0, len(images), self.batch_size):
      chunk = images[lo:lo + self.batch_size]
      n = len(chunk)
      if n < self.batch_size:  # pad with copies of the last image; their outputs are dropped below
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch_size - n, axis=0)])
      batch = parallel.global_batch({"image": chunk[p * local:(p + 1) * local]}, self.mesh)
      feats = _inception_output(self.variables, batch["image"], model=self.model, output=self.output,
                                resolution=self.resolution, mesh=self.mesh, preprocess=self.preprocess)
      out.append(np.asarray(feats)[:n])
    return np.concatenate(out)


def extract_features(images: np.ndarray | Iterable[np.ndarray], extractor: Callable[[np.ndarray], np.ndarray],
                     *, total: Optional[int] = None, desc: str = "inception features") -> np.ndarray:
  """Features [N, D] float32 of an array [N, H, W, 3] or an iterator of such batches, with a progress bar.

  extractor: e.g. an InceptionExtractor (any callable batch -> [n, D]). total: the number of images, for the
  bar's ETA (known for arrays and for `iter_image_folder`, which has a len). Raises on NaN/inf features.
  """
  if isinstance(images, np.ndarray):
    total, images = len(images), [images]
  elif total is None and hasattr(images, "__len__"):
    total = len(images)
  feats = []
  with progress(total or 0, desc) as bar:
    for batch in images:
      feats.append(np.asarray(extractor(batch), np.float32))
      bar.update(len(feats[-1]))
  if not feats:
    raise ValueError("no images: the folder or iterator was empty.")
  feats = np.concatenate(feats)
  if not np.all(np.isfinite(feats)):
    raise ValueError("the Inception features contain NaN/inf: check the images and the converted weights.")
  return feats


class iter_image_folder:  # noqa: N801  (used like a generator function; a class only to carry len())
  """uint8 batches [b, H, W, 3] of the pictures in `folder` (pytorch-fid's extensions, sorted), RGB.

  All pictures must have one size (resize them first, e.g. generated and real images to one resolution).
  `len()` is the number of pictures.
  """

  def __init__(self, folder: str, batch_size: int = 50):
    if not os.path.isdir(folder):
      raise FileNotFoundError(f"image folder {folder!r} does not exist.")
    self.files = sorted(f for ext in IMAGE_EXTENSIONS for f in glob.glob(os.path.join(folder, f"*.{ext}")))
    if not self.files:
      raise ValueError(f"no pictures ({', '.join(IMAGE_EXTENSIONS)}) in {folder!r}.")
    self.batch_size = batch_size

  def __len__(self) -> int:
    return len(self.files)

  def __iter__(self) -> Iterator[np.ndarray]:
    size = None
    for lo in range(0, len(self.files), self.batch_size):
      batch = []
      for path in self.files[lo:lo + self.batch_size]:
        with Image.open(path) as im:
          image = np.asarray(im.convert("RGB"))
        if size is None:
          size = image.shape
        elif image.shape != size:
          raise ValueError(f"{path!r} is {image.shape[1]} x {image.shape[0]} but the first picture is "
                           f"{size[1]} x {size[0]}: every picture of a folder must have one size.")
        batch.append(image)
      yield np.stack(batch)
