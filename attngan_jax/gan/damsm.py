"""The frozen DAMSM of AttnGAN training, sampling and evaluation: text encoder, image encoder and vocabulary.

GAN training uses the pretrained DAMSM three ways: the text encoder turns captions into the word and sentence
features the generator is conditioned on; the image encoder scores the last stage's images in the DAMSM term of
the generator loss; and both give the R-precision of generated images. All of it is frozen (eval mode: no
dropout, running BatchNorm statistics), as the reference (trainer.py build_models) has it.

Sources (`damsm_config()`, config.damsm), first found:
- `text_encoder` + `image_encoder`: directories written by `python -m attngan_jax.convert_torch` (e.g. the
  released text_encoder200.pth / image_encoder200.pth) or by pretrain_damsm's export; the vocabulary is the
  vocab.json beside the text encoder, or `vocab_file` (the reference's captions.pickle, or a vocab.json);
- `workdir`: a `python -m attngan_jax.pretrain_damsm` run folder (its exported <workdir>/damsm/{text_encoder,
  image_encoder}, written when pretraining finishes);
- `random_init`: freshly initialised small encoders (tests and the tiny configs only: no other run needed), with
  the vocabulary of the dataset's captions; `export` writes them so sampling and evaluation can load them.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections

from attngan_jax import convert_torch
from attngan_jax.damsm.image_encoder import ImageEncoder
from attngan_jax.initializers import rbg_key
from attngan_jax.text import TextTransform, Vocabulary
from attngan_jax.damsm.text_encoder import TextEncoder

log = logging.getLogger(__name__)


def damsm_config() -> ml_collections.ConfigDict:
  """config.damsm: where the frozen DAMSM comes from (module docstring)."""
  return ml_collections.ConfigDict({
      "workdir": "",         # a pretrain_damsm run folder (uses its export <workdir>/damsm)
      "text_encoder": "",    # or: converted / exported encoder directories
      "image_encoder": "",
      "vocab_file": "",      # captions.pickle or vocab.json; "" = the vocab.json beside the text encoder
      "random_init": False,  # tests / tiny configs: random small encoders, no other run needed
      "random": ml_collections.ConfigDict({"embed_dim": 16, "small_cnn_width": 8, "image_size": 32}),
  })


def _read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


class FrozenDAMSM:
  """Text and image encoders with their variables, the vocabulary, and pure encode functions.

  `variables` = {"text": ..., "image": ...}: pass them (replicated on the mesh) to the jitted steps instead of
  closing over them, so the step programs do not embed the weights as constants.
  image_size: the side the image encoder was trained at (small CNN; images of another size are resized to it
  bilinearly); None for the Inception encoder, which resizes to 299 itself.
  """

  def __init__(self, text_model: TextEncoder, image_model: Optional[ImageEncoder], variables: dict,
               vocab: Vocabulary, *, image_size: Optional[int], source: str):
    self.text_model, self.image_model, self.variables, self.vocab = text_model, image_model, variables, vocab
    self.image_size, self.source = image_size, source
    self.embedding_dim = int(text_model.output_dim)
    if image_model is not None and int(image_model.embed_dim) != self.embedding_dim:
      raise ValueError(f"the DAMSM of {source} has text features of {self.embedding_dim} and image features of "
                       f"{image_model.embed_dim} dimensions: use a text and an image encoder trained together.")

  # Equal when the encoders' architectures and the image size are (the weights are passed to the jitted
  # functions, not captured): jitted functions taking a FrozenDAMSM as a static argument compile once for all.
  def _key(self) -> tuple:
    return (self.text_model, self.image_model, self.image_size)

  def __hash__(self) -> int:
    return hash(self._key())

  def __eq__(self, other) -> bool:
    return isinstance(other, FrozenDAMSM) and self._key() == other._key()

  # -- loading ---------------------------------------------------------------------------------------------

  @classmethod
  def from_dirs(cls, text_dir: str, image_dir: Optional[str], vocab_file: str = "") -> "FrozenDAMSM":
    """From converted / exported encoder directories (attngan_jax.convert_torch format). Without an image
    encoder (image_dir None) only the text side works: enough for sampling."""
    text_model, text_vars, vocab = convert_torch.load_text_encoder(text_dir)
    image_model, image_vars = convert_torch.load_image_encoder(image_dir) if image_dir else (None, None)
    if vocab_file:
      vocab = (Vocabulary.from_captions_pickle(vocab_file)[0] if vocab_file.endswith((".pickle", ".pkl"))
               else Vocabulary.load_json(vocab_file))
    if vocab is None:
      raise ValueError(f"{text_dir!r} has no {convert_torch.VOCAB_FILE}: set damsm.vocab_file to the vocabulary the "
                       "text encoder was trained with (the reference's captions.pickle or a vocab.json).")
    if len(vocab) != text_model.n_words:
      raise ValueError(f"the vocabulary has {len(vocab)} words but the text encoder in {text_dir!r} "
                       f"{text_model.n_words}: use the vocabulary of the same DAMSM.")
    image_size = None
    if image_model is not None and image_model.backbone != "inception_v3":
      image_size = _read_json(os.path.join(image_dir, convert_torch.CONFIG_FILE)).get("image_size")
    variables = {"text": text_vars} if image_model is None else {"text": text_vars, "image": image_vars}
    return cls(text_model, image_model, variables, vocab, image_size=int(image_size) if image_size else None,
               source=f"{text_dir!r} + {image_dir!r}" if image_dir else repr(text_dir))

  @classmethod
  def random(cls, vocab: Vocabulary, embedding_dim: int, cfg: ml_collections.ConfigDict,
             seed: int = 0) -> "FrozenDAMSM":
    """Randomly initialised small encoders (small CNN image encoder): for tests and tiny configs only."""
    text_model = TextEncoder(n_words=len(vocab), embed_dim=int(cfg.embed_dim), output_dim=embedding_dim)
    image_model = ImageEncoder(embed_dim=embedding_dim, backbone="small_cnn",
                               small_cnn_width=int(cfg.small_cnn_width))
    k_text, k_image = jax.random.split(rbg_key(jax.random.key(seed)))
    size = int(cfg.image_size)
    init = jax.jit(lambda kt, ki: (text_model.init(kt, jnp.zeros((1, 2), jnp.int32), jnp.ones((1,), jnp.int32)),
                                   image_model.init(ki, jnp.zeros((1, size, size, 3), jnp.float32))))
    text_vars, image_vars = init(k_text, k_image)
    return cls(text_model, image_model, {"text": text_vars, "image": image_vars}, vocab, image_size=size,
               source="random initialisation")

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict, *, embedding_dim: int,
                  vocab_for_random: Any = None, seed: int = 0) -> "FrozenDAMSM":
    """The DAMSM config.damsm names; `vocab_for_random()` builds the vocabulary of a random one."""
    if cfg.text_encoder or cfg.image_encoder:
      if not (cfg.text_encoder and cfg.image_encoder):
        raise ValueError("set both damsm.text_encoder and damsm.image_encoder (directories from python -m "
                         "attngan_jax.convert_torch or a pretrain_damsm export), or damsm.workdir.")
      damsm = cls.from_dirs(cfg.text_encoder, cfg.image_encoder, cfg.vocab_file)
    elif cfg.workdir:
      export = os.path.join(cfg.workdir, "damsm")
      if not os.path.isdir(os.path.join(export, "text_encoder")):
        raise FileNotFoundError(
            f"damsm.workdir={cfg.workdir!r} has no exported encoders ({export}/text_encoder): run python -m "
            "attngan_jax.pretrain_damsm with that workdir to the end (it exports them), or set damsm.text_encoder "
            "and damsm.image_encoder to converted encoders.")
      damsm = cls.from_dirs(os.path.join(export, "text_encoder"), os.path.join(export, "image_encoder"),
                            cfg.vocab_file)
    elif cfg.random_init:
      if vocab_for_random is None:
        raise ValueError("a randomly initialised DAMSM needs the dataset's vocabulary.")
      damsm = cls.random(vocab_for_random(), embedding_dim, cfg.random, seed)
    else:
      raise ValueError("no DAMSM given: set damsm.workdir to a pretrain_damsm run (e.g. --config.damsm.workdir="
                       "runs/damsm_shapes), or damsm.text_encoder + damsm.image_encoder to converted encoders "
                       "(python -m attngan_jax.convert_torch), or damsm.random_init=True for a smoke test.")
    if damsm.embedding_dim != embedding_dim:
      raise ValueError(f"the DAMSM of {damsm.source} gives {damsm.embedding_dim}-d features but model.embedding_dim="
                       f"{embedding_dim}: set model.embedding_dim={damsm.embedding_dim}.")
    log.info("DAMSM from %s (%d words, %d-d)", damsm.source, len(damsm.vocab), damsm.embedding_dim)
    return damsm

  def export(self, out_dir: str) -> dict[str, str]:
    """Writes both encoders (+ vocabulary) as pretrain_damsm does; returns {"text_encoder", "image_encoder"}."""
    text_dir, image_dir = os.path.join(out_dir, "text_encoder"), os.path.join(out_dir, "image_encoder")
    if jax.process_index() == 0:
      t, i = self.text_model, self.image_model
      convert_torch.save_converted(text_dir, jax.device_get(self.variables["text"]),
                                   {"kind": "text_encoder", "n_words": t.n_words, "embed_dim": t.embed_dim,
                                    "output_dim": t.output_dim})
      self.vocab.save_json(os.path.join(text_dir, convert_torch.VOCAB_FILE))
      convert_torch.save_converted(image_dir, jax.device_get(self.variables["image"]),
                                   {"kind": "image_encoder", "embed_dim": i.embed_dim, "backbone": i.backbone,
                                    "input_size": i.input_size, "small_cnn_width": i.small_cnn_width,
                                    "image_size": self.image_size})
    return {"text_encoder": text_dir, "image_encoder": image_dir}

  # -- pure functions (jittable; variables passed in) ------------------------------------------------------

  def text_transform(self, words_num: int) -> TextTransform:
    return TextTransform(self.vocab, words_num)

  def encode_text(self, variables: dict, tokens: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(words [B, T, D], sentence [B, D]) of token ids; frozen (no gradient, no dropout)."""
    words, sent = self.text_model.apply(variables["text"], tokens, lengths)
    return jax.lax.stop_gradient(words), jax.lax.stop_gradient(sent)

  def encode_image(self, variables: dict, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(regions [B, h, w, D], global [B, D]) of images in [-1, 1]; gradients flow to the images only."""
    if self.image_model is None:
      raise ValueError(f"the DAMSM of {self.source} was loaded without its image encoder.")
    if self.image_size and images.shape[1:3] != (self.image_size, self.image_size):
      images = jax.image.resize(images, (images.shape[0], self.image_size, self.image_size, 3), "bilinear",
                                antialias=True)
    return self.image_model.apply(jax.lax.stop_gradient(variables["image"]), images, train=False)
