"""Generating images from captions with a trained AttnGAN generator, and the pictures made of them.

`Sampler` runs the frozen DAMSM text encoder and the generator (eval mode: BatchNorm running statistics) as one
jitted function, data parallel over the mesh, on batches padded to a fixed size (one compiled shape). Each
image's noise comes from its own seed (`noise_for_seeds`: z and the CA noise from `jax.random.key(seed)`), so
an image does not depend on the batch it was generated in.

Pictures:
- `stage_grid`: for each caption the images of every stage side by side (enlarged to the last stage's size).
- `attention_figure`: the paper's Fig. 1/4 attention picture. For each caption and attention stage, the image of
  the stage the attention fed (stage i + 1 for the maps of stage i), then the top-k words by summed attention
  after Eq. 15's suppression (weights <= 1/T set to 0; T = the caption's words), each word's map Gaussian-
  upsampled over the image (attngan_jax.attention_maps).
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from attngan_jax import attention_maps
from attngan_jax.gan.damsm import FrozenDAMSM
from attngan_jax.gan.generator import Generator
from t2i_common import parallel
from t2i_common.logging import image_grid, to_uint8


def noise_for_seeds(seeds: Sequence[int], z_dim: int, condition_dim: int) -> tuple[np.ndarray, np.ndarray]:
  """(z [N, z_dim], CA noise [N, condition_dim]), N(0, 1), each row from its own seed."""
  def one(seed):
    kz, kc = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kz, (z_dim,)), jax.random.normal(kc, (condition_dim,))
  z, eps = jax.jit(jax.vmap(one))(jnp.asarray(np.asarray(seeds, np.uint32)))
  return np.asarray(z), np.asarray(eps)


def padding_mask(lengths: jax.Array, words_num: int) -> jax.Array:
  """bool [B, T]: True at padding (the reference's `captions == 0`)."""
  return jnp.arange(words_num)[None, :] >= jnp.asarray(lengths)[:, None]


@functools.partial(jax.jit, static_argnames=("generator", "text_model", "mesh"))
def _generate(variables: dict, batch: dict, *, generator: Generator, text_model: Any,
              mesh: jax.sharding.Mesh) -> dict:
  # Module-level with the (hashable) modules static: every Sampler of the same models and batch shape shares one
  # compiled program (the training-time hooks, the CLIs and the tests build several).
  words, sent = text_model.apply(variables["damsm"]["text"], batch["tokens"], batch["length"])
  mask = padding_mask(batch["length"], batch["tokens"].shape[1])
  images, maps, _, _ = generator.apply(variables["gen"], batch["z"], sent, words, mask, ca_noise=batch["eps"])
  out = {"images": images, "maps": maps, "sent": sent}
  return jax.lax.with_sharding_constraint(out, parallel.replicated(mesh))


class Sampler:
  """Captions + seeds -> images of every stage and attention maps (see the module docstring).

  gen_variables: {"params", "batch_stats"} of the generator (the EMA parameters for a trained run).
  batch_size: images per compiled call (rounded up to a multiple of the mesh size).
  """

  def __init__(self, generator: Generator, gen_variables: dict, damsm: FrozenDAMSM, words_num: int, *,
               mesh: Optional[jax.sharding.Mesh] = None, batch_size: int = 16):
    self.generator, self.damsm, self.words_num = generator, damsm, int(words_num)
    self.mesh = mesh if mesh is not None else parallel.create_mesh(None)
    self.batch_size = -(-int(batch_size) // self.mesh.size) * self.mesh.size
    self.text_transform = damsm.text_transform(self.words_num)
    self.variables = jax.device_put({"gen": gen_variables, "damsm": {"text": damsm.variables["text"]}},
                                    parallel.replicated(self.mesh))

  def set_generator_variables(self, gen_variables: dict) -> None:
    """Samples with other generator weights of the same shapes (e.g. the EMA weights of a later step), without
    compiling again."""
    self.variables = dict(self.variables, gen=jax.device_put(gen_variables, parallel.replicated(self.mesh)))

  def encode_captions(self, captions: Sequence[str], seed: int = 0) -> dict[str, np.ndarray]:
    """Token ids and lengths; captions longer than words_num keep an in-order random subset of words_num words
    (the reference's get_caption), drawn from `seed`."""
    if isinstance(captions, str):
      raise TypeError("pass a list of captions, not one string.")
    return self.text_transform.batch(list(captions), np.random.default_rng(seed))

  def generate_tokens(self, tokens: np.ndarray, lengths: np.ndarray, seeds: Sequence[int]) -> dict[str, Any]:
    """Like `generate`, from token ids [N, words_num] and lengths [N]."""
    n = len(tokens)
    if len(lengths) != n or len(seeds) != n:
      raise ValueError(f"{n} captions, {len(lengths)} lengths and {len(seeds)} seeds: pass one of each per image.")
    if n == 0:
      raise ValueError("no captions to generate from.")
    z, eps = noise_for_seeds(seeds, self.generator.z_dim, self.generator.condition_dim)
    parts = []
    for lo in range(0, n, self.batch_size):
      chunk = {"tokens": tokens[lo:lo + self.batch_size], "length": np.asarray(lengths[lo:lo + self.batch_size]),
               "z": z[lo:lo + self.batch_size], "eps": eps[lo:lo + self.batch_size]}
      parts.append(self._run(chunk))
    return {key: [np.concatenate([p[key][i] for p in parts]) for i in range(len(parts[0][key]))]
            for key in ("images", "maps")} | {"sent": np.concatenate([p["sent"] for p in parts])}

  def generate(self, captions: Sequence[str], seeds: Sequence[int], *, text_seed: int = 0) -> dict[str, Any]:
    """{"images": per stage [N, S, S, 3] float in [-1, 1], "maps": per attention stage [N, T, h, w],
    "sent": sentence vectors [N, D], "tokens", "length"} for captions[i] with seeds[i]."""
    enc = self.encode_captions(captions, text_seed)
    out = self.generate_tokens(enc["tokens"], enc["length"], seeds)
    out.update(tokens=enc["tokens"], length=enc["length"])
    return out

  def _run(self, chunk: dict[str, np.ndarray]) -> dict[str, Any]:
    """One padded, sharded call; outputs cut back to the chunk's rows."""
    n = len(chunk["tokens"])
    pad = self.batch_size - n
    if pad:
      chunk = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in chunk.items()}
    p, count = jax.process_index(), jax.process_count()
    local = self.batch_size // count
    batch = parallel.global_batch({k: v[p * local:(p + 1) * local] for k, v in chunk.items()}, self.mesh)
    out = jax.device_get(_generate(self.variables, batch, generator=self.generator,
                                   text_model=self.damsm.text_model, mesh=self.mesh))
    return {"images": [np.asarray(x)[:n] for x in out["images"]], "maps": [np.asarray(x)[:n] for x in out["maps"]],
            "sent": np.asarray(out["sent"])[:n]}

  def words(self, tokens: np.ndarray, length: int) -> list[str]:
    return self.damsm.vocab.decode(tokens, int(length))


# ---------------------------------------------------------------------------------------------- pictures

def to_unit(images: np.ndarray) -> np.ndarray:
  """[-1, 1] generator output -> float [0, 1]."""
  return np.clip((np.asarray(images, np.float32) + 1.0) / 2.0, 0.0, 1.0)


def _enlarge(images: np.ndarray, size: int) -> np.ndarray:
  factor = size // images.shape[1]
  return images.repeat(factor, axis=1).repeat(factor, axis=2) if factor > 1 else images


def stage_grid(stage_images: Sequence[np.ndarray], captions: Sequence[str], *, min_side: int = 96) -> np.ndarray:
  """uint8 grid: one row per caption, one column per stage (nearest-enlarged to the last stage's size); the
  caption under the last stage's image, the stage size under the others."""
  size = stage_images[-1].shape[1]
  n, k = len(captions), len(stage_images)
  cells, labels = [], []
  for i in range(n):
    for s, images in enumerate(stage_images):
      cells.append(_enlarge(to_unit(images[i:i + 1]), size)[0])
      labels.append(captions[i] if s == k - 1 else f"{images.shape[1]} px")
  return image_grid(np.stack(cells), labels, ncols=k, min_side=min_side)


def suppressed_attention(beta: np.ndarray) -> np.ndarray:
  """Eq. 15: weights <= 1/T set to 0 (beta [T, N] over the caption's T real words)."""
  beta = np.asarray(beta, np.float32)
  return np.where(beta > 1.0 / beta.shape[0], beta, 0.0)


def attention_figure(stage_images: Sequence[np.ndarray], maps: Sequence[np.ndarray], words: Sequence[Sequence[str]],
                     *, k: int = 5, size: Optional[int] = None) -> np.ndarray:
  """uint8 picture: per caption and attention stage i, the image of stage i + 1 and the top-k words' maps.

  maps[i]: [N, T, h, w] from the generator; words[n]: the real words of caption n (their count is T_n).
  Words are ranked by their summed attention after Eq. 15's suppression, and each map is upsampled smoothly
  (bilinear + Gaussian) over the image (attngan_jax.attention_maps).
  """
  if not maps:
    raise ValueError("the generator has one stage, so there is no word attention to draw (model.branch_num >= 2).")
  images, betas, row_words = [], [], []
  for n, ws in enumerate(words):
    t = len(ws)
    for i, stage_maps in enumerate(maps):
      beta = np.asarray(stage_maps[n, :t]).reshape(t, -1)
      images.append(to_unit(stage_images[i + 1][n]))
      betas.append(suppressed_attention(beta))  # ranking and drawing both see the suppressed weights
      row_words.append(list(ws))
  size = size or max(stage_images[-1].shape[1], 96)
  return attention_maps.attention_figure([to_uint8(x) for x in images], betas, row_words, k=k, size=size)
