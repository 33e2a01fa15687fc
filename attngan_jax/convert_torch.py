"""Import of PyTorch DAMSM / Inception-v3 / AttnGAN weights (and one TensorFlow Inception) into our Flax modules.

Sources:
- text_encoder: the reference's text_encoder*.pth (RNN_ENCODER state dict: encoder.weight,
  rnn.{weight,bias}_{ih,hh}_l0[_reverse]);
- image_encoder: the reference's image_encoder*.pth (CNN_ENCODER: every Inception block up to Mixed_7c with
  BatchNorm running statistics, emb_features.weight, emb_cnn_code.{weight,bias});
- inception: torchvision's ImageNet Inception-v3 state dict (AuxLogits.* dropped on purpose; fc kept unless
  --no-fc), e.g. to initialise the frozen backbone of a new image encoder (`inception_into_image_encoder`);
- generator: the reference's netG_epoch_*.pth (G_NET: ca_net, h_net1..3, img_net1..3), architecture read from
  the tensor shapes (gf_dim, r_num, branch_num, base_size, z_dim, condition_dim, embedding_dim);
  `load_generator(path, config.model)` also checks it against the config and says which config the file fits;
- discriminator: the reference's netD{0,1,2}.pth (D_NET64 / D_NET128 / D_NET256; image size and df_dim read from
  the shapes), `load_discriminator`;
- fid_inception: pytorch-fid's FID Inception weights (pt_inception-2015-12-05-*.pth, the state dict of its
  fid_inception_v3(): torchvision's names, no aux head, 1008-class fc kept unless --no-fc) into
  InceptionV3(variant="fid"), read back by `load_fid_inception` (t2i_common.metrics: FID, Inception score);
- stackgan_inception: the one TensorFlow kind: StackGAN's CUB-fine-tuned Inception-v3 for the birds Inception score,
  the TF-slim checkpoint inception_finetuned_models/birds_valid299/model.ckpt-5000 (its exponential-moving-average
  weights, as StackGAN's inception_score.py restores them; 51 classes, 0 = background) or an .npz of {variable name:
  array}, into InceptionV3(variant="slim"), read back by `load_stackgan_inception`; needs TensorFlow for the
  checkpoint (pip install tensorflow-cpu). attngan_jax.stackgan_inception has the names and the reference's facts.

Every import is strict (t2i_common.weights.convert_strict): a missing, unexpected or mis-shaped tensor
raises with the list of names. Output directory: `variables.safetensors` (flat "collection/module/.../name"
keys) + `config.json` (kind and model options), read back by `load_text_encoder` / `load_image_encoder` /
`load_inception`.

CLI: python -m attngan_jax.convert_torch --kind text_encoder|image_encoder|inception|fid_inception|generator|
     discriminator --src FILE.pth --out DIR [--captions captions.pickle]  (text_encoder: also writes the
     matching vocab.json)
     python -m attngan_jax.convert_torch --kind stackgan_inception \
         --src inception_finetuned_models/birds_valid299/model.ckpt-5000 --out weights/inception_cub
"""
from __future__ import annotations

import argparse
import json
import os
import re
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from attngan_jax.gan import torch_weights as gan_names
from attngan_jax.gan.config import gan_model_config
from attngan_jax.gan.discriminator import Discriminator
from attngan_jax.gan.generator import Generator, make_generator
from attngan_jax.damsm.image_encoder import ImageEncoder
from attngan_jax import stackgan_inception
from attngan_jax.inception import InceptionV3
from attngan_jax.text import Vocabulary
from attngan_jax.damsm.text_encoder import TextEncoder
from t2i_common.weights import (BATCHNORM_LEAVES, abstract_params, conv_kernel, convert_strict, dense_kernel,
                                read_state_dict)

KINDS = ("text_encoder", "image_encoder", "inception", "fid_inception", "generator", "discriminator",
         "stackgan_inception")
VARIABLES_FILE = "variables.safetensors"
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
# Known tensors deliberately not imported: PyTorch >= 0.4.1 BatchNorm step counters, the aux classifier.
IGNORE_ALWAYS = (r"(^|\.)num_batches_tracked$",)
IGNORE_INCEPTION = IGNORE_ALWAYS + (r"^AuxLogits\.",)

_BN = BATCHNORM_LEAVES


# ---------------------------------------------------------------------------------------------- renames

def _rename_text(name: str, w: np.ndarray):
  if name == "encoder.weight":
    return ("params", "encoder", "embedding"), w
  m = re.fullmatch(r"rnn\.(weight|bias)_(ih|hh)_l0(_reverse)?", name)
  if not m:
    return None
  kind, part, reverse = m.groups()
  direction = "backward" if reverse else "forward"
  if kind == "weight":  # (4H, in) -> (in, 4H); the gate order i, f, g, o is kept
    return ("params", direction, f"kernel_{part}"), dense_kernel(w)
  return ("params", direction, f"bias_{part}"), w


def _rename_inception_block(name: str, w: np.ndarray, prefix: tuple[str, ...]):
  """Conv2d_*/Mixed_*.<...>.conv.weight and .bn.* -> Flax paths under `prefix`."""
  parts = name.split(".")
  if len(parts) < 3 or not re.match(r"(Conv2d_|Mixed_)", parts[0]):
    return None
  *modules, layer, leaf = parts
  if layer == "conv" and leaf == "weight" and w.ndim == 4:
    return ("params",) + prefix + tuple(modules) + ("conv", "kernel"), conv_kernel(w)
  if layer == "bn" and leaf in _BN:
    collection, flax_leaf = _BN[leaf]
    return (collection,) + prefix + tuple(modules) + ("bn", flax_leaf), w
  return None


def _rename_image_encoder(name: str, w: np.ndarray):
  if name == "emb_features.weight":  # 1x1 conv
    return ("params", "emb_features", "kernel"), conv_kernel(w)
  if name == "emb_cnn_code.weight":
    return ("params", "emb_cnn_code", "kernel"), dense_kernel(w)
  if name == "emb_cnn_code.bias":
    return ("params", "emb_cnn_code", "bias"), w
  return _rename_inception_block(name, w, ("inception",))


def _rename_inception(name: str, w: np.ndarray):
  if name == "fc.weight":
    return ("params", "fc", "kernel"), dense_kernel(w)
  if name == "fc.bias":
    return ("params", "fc", "bias"), w
  return _rename_inception_block(name, w, ())


# ------------------------------------------------------------------------------------ model builders

def _text_model(state: dict[str, np.ndarray]) -> tuple[TextEncoder, dict]:
  if "encoder.weight" not in state or "rnn.weight_hh_l0" not in state:
    raise ValueError("not a DAMSM text encoder state dict: expected encoder.weight and rnn.weight_hh_l0; "
                     f"found {sorted(state)[:6]}...")
  n_words, embed_dim = state["encoder.weight"].shape
  hidden = state["rnn.weight_hh_l0"].shape[1]
  if "rnn.weight_hh_l0_reverse" not in state:
    raise ValueError("the text encoder checkpoint is not bidirectional (no rnn.*_reverse tensors); "
                     "only the reference's bidirectional LSTM encoder is supported.")
  config = {"kind": "text_encoder", "n_words": int(n_words), "embed_dim": int(embed_dim),
            "output_dim": int(2 * hidden)}
  return text_encoder_from_config(config), config


def _image_model(state: dict[str, np.ndarray]) -> tuple[ImageEncoder, dict]:
  if "emb_features.weight" not in state:
    raise ValueError("not a DAMSM image encoder state dict: expected emb_features.weight; "
                     f"found {sorted(state)[:6]}...")
  config = {"kind": "image_encoder", "embed_dim": int(state["emb_features.weight"].shape[0]),
            "backbone": "inception_v3", "input_size": 299}
  return image_encoder_from_config(config), config


def _inception_model(state: dict[str, np.ndarray], keep_fc: bool) -> tuple[InceptionV3, dict]:
  num_classes = int(state["fc.weight"].shape[0]) if keep_fc and "fc.weight" in state else None
  config = {"kind": "inception", "num_classes": num_classes}
  return inception_from_config(config), config


def _fid_inception_model(state: dict[str, np.ndarray], keep_fc: bool) -> tuple[InceptionV3, dict]:
  if any(k.startswith("AuxLogits.") for k in state):
    raise ValueError("this state dict has AuxLogits.* tensors: it is torchvision's Inception-v3 (--kind "
                     "inception), not pytorch-fid's FID Inception file pt_inception-2015-12-05-*.pth.")
  num_classes = int(state["fc.weight"].shape[0]) if keep_fc and "fc.weight" in state else None
  config = {"kind": "fid_inception", "num_classes": num_classes, "variant": "fid"}
  return inception_from_config(config), config


def _stackgan_inception_model(state: dict[str, np.ndarray], keep_fc: bool, source: str) -> tuple[InceptionV3, dict]:
  classes = stackgan_inception.num_classes(state, source)
  config = {"kind": "stackgan_inception", "num_classes": classes if keep_fc else None, "variant": "slim"}
  return inception_from_config(config), config


def text_encoder_from_config(config: dict) -> TextEncoder:
  return TextEncoder(n_words=config["n_words"], embed_dim=config["embed_dim"], output_dim=config["output_dim"])


def image_encoder_from_config(config: dict) -> ImageEncoder:
  return ImageEncoder(embed_dim=config["embed_dim"], backbone=config.get("backbone", "inception_v3"),
                      input_size=config.get("input_size", 299), small_cnn_width=config.get("small_cnn_width", 32))


def inception_from_config(config: dict) -> InceptionV3:
  return InceptionV3(num_classes=config.get("num_classes"), variant=config.get("variant", "torchvision"))


def generator_from_config(config: dict, reference_mask_bug: bool = False) -> Generator:
  """The Generator of a converted netG's config.json (architecture only; the mask mode is the caller's)."""
  arch = {k: config[k] for k in gan_names.GENERATOR_KEYS if config.get(k) is not None}
  return make_generator(gan_model_config(**arch, reference_mask_bug=reference_mask_bug))


def discriminator_from_config(config: dict) -> Discriminator:
  return Discriminator(image_size=config["image_size"], df_dim=config["df_dim"],
                       embedding_dim=config["embedding_dim"])


def _generator_model(state: dict[str, np.ndarray]) -> tuple[Generator, dict]:
  arch = gan_names.generator_architecture(state)
  return generator_from_config(arch), {"kind": "generator", **arch}


def _discriminator_model(state: dict[str, np.ndarray]) -> tuple[Discriminator, dict]:
  config = {"kind": "discriminator", **gan_names.discriminator_architecture(state)}
  return discriminator_from_config(config), config


def _template(model, kind: str) -> Any:
  if kind == "generator":
    b, t = 1, 2
    return abstract_params(model, jnp.zeros((b, model.z_dim)), jnp.zeros((b, model.embedding_dim)),
                           jnp.zeros((b, t, model.embedding_dim)), jnp.zeros((b, t), bool),
                           ca_noise=jnp.zeros((b, model.condition_dim)))
  if kind == "discriminator":
    s = model.image_size
    return abstract_params(model, jnp.zeros((1, s, s, 3)), jnp.zeros((1, model.embedding_dim)))
  if kind == "text_encoder":
    args = (jnp.zeros((1, 2), jnp.int32), jnp.ones((1,), jnp.int32))
  else:
    args = (jnp.zeros((1, 80, 80, 3), jnp.float32),)  # >= 75 (Inception) and divisible by 16 (small CNN)
  return abstract_params(model, *args)


# ---------------------------------------------------------------------------------------- conversion

def convert_state_dict(state: dict[str, np.ndarray], kind: str, *, source: str = "the state dict",
                       keep_fc: bool = True) -> tuple[Any, dict, dict]:
  """Converts a PyTorch state dict: returns (flax module, variables, model config dict)."""
  if kind == "text_encoder":
    model, config = _text_model(state)
    rename, ignore = _rename_text, IGNORE_ALWAYS
  elif kind == "image_encoder":
    model, config = _image_model(state)
    rename, ignore = _rename_image_encoder, IGNORE_ALWAYS
  elif kind == "inception":
    model, config = _inception_model(state, keep_fc)
    rename, ignore = _rename_inception, IGNORE_INCEPTION + (() if config["num_classes"] else (r"^fc\.",))
  elif kind == "generator":
    model, config = _generator_model(state)
    rename, ignore = gan_names.table_rename(gan_names.GENERATOR_TABLE), IGNORE_ALWAYS
  elif kind == "discriminator":
    model, config = _discriminator_model(state)
    rename, ignore = gan_names.table_rename(gan_names.DISCRIMINATOR_TABLE), IGNORE_ALWAYS
  elif kind == "fid_inception":
    model, config = _fid_inception_model(state, keep_fc)
    rename, ignore = _rename_inception, IGNORE_ALWAYS + (() if config["num_classes"] else (r"^fc\.",))
  elif kind == "stackgan_inception":  # TF-slim names: a table of its own, and the EMA weights where present
    state, averaged = stackgan_inception.select_averages(state, source)
    model, config = _stackgan_inception_model(state, keep_fc, source)
    config["weights"] = "exponential moving averages" if averaged else "plain variables (no EMA shadows in the file)"
    ignore = stackgan_inception.IGNORE + (() if config["num_classes"] else (r"^logits/",))
    variables = stackgan_inception.convert(state, _template(model, kind), source, ignore)
    return model, variables, config
  else:
    raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}.")
  variables = convert_strict(state, _template(model, kind), rename, source=source, ignore=ignore)
  return model, variables, config


def inception_into_image_encoder(image_variables: dict, inception_variables: dict) -> dict:
  """Copies Inception-v3 weights (e.g. torchvision's ImageNet ones) into an image encoder's backbone.

  The encoder's own new layers (emb_features, emb_cnn_code) keep their initialisation; every backbone
  tensor must be present with the right shape.
  """
  out = jax.tree_util.tree_map(lambda x: x, image_variables)
  for collection in ("params", "batch_stats"):
    target = image_variables[collection]["inception"]
    source = {k: v for k, v in inception_variables[collection].items() if k != "fc"}
    t_shapes = jax.tree_util.tree_map(np.shape, target)
    s_shapes = jax.tree_util.tree_map(np.shape, source)
    if t_shapes != s_shapes:
      raise ValueError(f"the Inception {collection} do not fit the image encoder's backbone; "
                       "both must be torchvision Inception-v3 structures.")
    out[collection] = dict(out[collection], inception=jax.tree_util.tree_map(jnp.asarray, source))
  return out


def save_converted(out_dir: str, variables: dict, config: dict) -> None:
  from safetensors.numpy import save_file
  os.makedirs(out_dir, exist_ok=True)
  flat = {"/".join(k): np.ascontiguousarray(np.asarray(v)) for k, v in traverse_util.flatten_dict(variables).items()}
  save_file(flat, os.path.join(out_dir, VARIABLES_FILE))
  with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
    json.dump(config, f, indent=2)


def _load(path: str, kind: str) -> tuple[dict, dict]:
  from safetensors.numpy import load_file
  config_path = os.path.join(path, CONFIG_FILE)
  weights_path = os.path.join(path, VARIABLES_FILE)
  if not (os.path.isfile(config_path) and os.path.isfile(weights_path)):
    raise FileNotFoundError(f"{path!r} is not a converted model directory (needs {CONFIG_FILE} and "
                            f"{VARIABLES_FILE}; create it with python -m attngan_jax.convert_torch).")
  with open(config_path) as f:
    config = json.load(f)
  if config.get("kind") != kind:
    raise ValueError(f"{path!r} holds a {config.get('kind')!r}, not a {kind!r}.")
  flat = load_file(weights_path)
  variables = traverse_util.unflatten_dict({tuple(k.split("/")): jnp.asarray(v) for k, v in flat.items()})
  return variables, config


def _check_tree(model, variables: dict, kind: str, path: str) -> None:
  expected = jax.tree_util.tree_map(lambda x: tuple(x.shape), _template(model, kind))
  got = jax.tree_util.tree_map(lambda x: tuple(x.shape), variables)
  if expected != got:
    raise ValueError(f"the variables in {path!r} do not fit the model described by its {CONFIG_FILE}.")


def load_text_encoder(path: str) -> tuple[TextEncoder, dict, Optional[Vocabulary]]:
  """(module, variables, vocabulary or None) from a directory written by this converter."""
  variables, config = _load(path, "text_encoder")
  model = text_encoder_from_config(config)
  _check_tree(model, variables, "text_encoder", path)
  vocab_path = os.path.join(path, VOCAB_FILE)
  vocab = Vocabulary.load_json(vocab_path) if os.path.isfile(vocab_path) else None
  if vocab is not None and len(vocab) != config["n_words"]:
    raise ValueError(f"{vocab_path!r} has {len(vocab)} words but the text encoder {config['n_words']}.")
  return model, variables, vocab


def load_image_encoder(path: str) -> tuple[ImageEncoder, dict]:
  variables, config = _load(path, "image_encoder")
  model = image_encoder_from_config(config)
  _check_tree(model, variables, "image_encoder", path)
  return model, variables


def load_inception(path: str) -> tuple[InceptionV3, dict]:
  variables, config = _load(path, "inception")
  model = inception_from_config(config)
  _check_tree(model, variables, "inception", path)
  return model, variables


def load_generator(path: str, model: ml_collections.ConfigDict) -> tuple[Generator, dict]:
  """(Generator, variables) from the reference's netG_*.pth (strict) or a directory written by this converter.

  model: config.model (attngan_jax.gan.config); its architecture must be the file's (else a ValueError names the
  config the file fits) and its `reference_mask_bug` sets the attention mask mode (the released generators were
  trained with the reference's mask, True). Call it in eval mode:
  `images, attn_maps, mu, logvar = gen.apply(variables, z, sent_emb, words_emb, mask, ca_noise=eps)`.
  """
  gen = make_generator(model)
  if os.path.isdir(path):
    variables, config = _load(path, "generator")
    gan_names.check_architecture(config, model, gan_names.GENERATOR_KEYS, repr(path), "generator")
    _check_tree(gen, variables, "generator", path)
    return gen, variables
  state = read_state_dict(path)
  arch = gan_names.generator_architecture(state)
  gan_names.check_architecture(arch, model, gan_names.GENERATOR_KEYS, repr(path), "generator")
  variables = convert_strict(state, _template(gen, "generator"), gan_names.table_rename(gan_names.GENERATOR_TABLE),
                             source=path, ignore=IGNORE_ALWAYS)
  return gen, variables


def load_discriminator(path: str, model: ml_collections.ConfigDict) -> tuple[Discriminator, dict]:
  """(Discriminator, variables) from a reference netD{0,1,2}.pth (strict) or a directory of this converter.

  The image size (64, 128, 256) comes from the file and must be one of the generator stages' of config.model;
  df_dim and embedding_dim must be config.model's.
  """
  if os.path.isdir(path):
    variables, config = _load(path, "discriminator")
    state = None
  else:
    state = read_state_dict(path)
    config = gan_names.discriminator_architecture(state)
  gan_names.check_architecture(config, model, gan_names.DISCRIMINATOR_KEYS, repr(path), "discriminator")
  sizes = [model.base_size * 2 ** i for i in range(model.branch_num)]
  if config["image_size"] not in sizes:
    raise ValueError(f"the discriminator in {path!r} is for {config['image_size']} px images, but config.model's "
                     f"generator stages are {sizes} px.")
  disc = discriminator_from_config(config)
  if state is None:
    _check_tree(disc, variables, "discriminator", path)
  else:
    variables = convert_strict(state, _template(disc, "discriminator"),
                               gan_names.table_rename(gan_names.DISCRIMINATOR_TABLE), source=path,
                               ignore=IGNORE_ALWAYS)
  return disc, variables


def load_stackgan_inception(path: str) -> tuple[InceptionV3, dict]:
  """(InceptionV3(variant="slim"), variables) from `--kind stackgan_inception` output (StackGAN's CUB Inception)."""
  variables, config = _load(path, "stackgan_inception")
  model = inception_from_config(config)
  _check_tree(model, variables, "stackgan_inception", path)
  return model, variables


def load_fid_inception(path: str) -> tuple[InceptionV3, dict]:
  """(InceptionV3(variant="fid"), variables) from `--kind fid_inception` output (pytorch-fid's weights)."""
  variables, config = _load(path, "fid_inception")
  model = inception_from_config(config)
  _check_tree(model, variables, "fid_inception", path)
  return model, variables


def convert_file(kind: str, src: str, out: str, *, captions: Optional[str] = None, keep_fc: bool = True) -> dict:
  """Converts `src` into the directory `out`; returns the model config written."""
  state = stackgan_inception.read_checkpoint(src) if kind == "stackgan_inception" else read_state_dict(src)
  _, variables, config = convert_state_dict(state, kind, source=src, keep_fc=keep_fc)
  if captions is not None:
    if kind != "text_encoder":
      raise ValueError("--captions only goes with --kind text_encoder (the vocabulary of its word ids).")
    vocab, _, _ = Vocabulary.from_captions_pickle(captions)
    if len(vocab) != config["n_words"]:
      raise ValueError(f"{captions!r} has {len(vocab)} words but the text encoder in {src!r} was trained with "
                       f"{config['n_words']}: use the captions.pickle of the same dataset.")
  save_converted(out, variables, config)
  if captions is not None:
    vocab.save_json(os.path.join(out, VOCAB_FILE))
  return config


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--kind", required=True, choices=KINDS)
  parser.add_argument("--src", required=True, help="PyTorch .pth/.pt/.bin/.safetensors state dict; "
                      "stackgan_inception: the TensorFlow checkpoint (prefix, e.g. model.ckpt-5000) or an .npz")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--captions", default=None, help="text_encoder: the reference captions.pickle")
  parser.add_argument("--no-fc", action="store_true",
                      help="inception, fid_inception, stackgan_inception: drop the classifier")
  args = parser.parse_args(argv)
  config = convert_file(args.kind, args.src, args.out, captions=args.captions, keep_fc=not args.no_fc)
  print(f"wrote {args.out}: {json.dumps(config)}")


if __name__ == "__main__":
  main()
