"""Tiny diffusers-format Stable Diffusion folders for tests (PyTorch side built with random weights).

`write_tiny_sd(tmpdir, variant)` writes a complete pipeline folder with `StableDiffusionPipeline.save_pretrained`:
model_index.json, unet/, vae/, text_encoder/, tokenizer/ (in the layout the
installed transformers writes: tokenizer.json with transformers 5), scheduler/. Variants:

- "sd1": SD-1.x style: `attention_head_dim` an int (diffusers reads it as the number of heads), conv
  proj_in/proj_out, layers_per_block 2, quick_gelu text encoder, PNDM (skip_prk_steps), epsilon prediction,
  padding with <|endoftext|>.
- "sd2": SD-2.x style: per-block head sizes, linear projection, upcast_attention, a cross_attention_dim
  different from the UNet's first width, gelu text encoder, DDIM with v-prediction, padding with "!" (id 0).
- "reference": the diffusers Attend-and-Excite test config (REFERENCE.md section 2), DDIM, epsilon.

The tokenizer is a real CLIP byte-level BPE (256 byte symbols, 256 with "</w>", merges, the two specials) whose
merges are learned here from a small word list, so words outside the list split into several sub-word tokens.
Needs torch, diffusers and transformers: callers should `pytest.importorskip` them first.
"""
from __future__ import annotations

import os
from collections import Counter

import pytest

from diffusion_jax.clip_vocab import learn_clip_bpe
from diffusion_jax.convert import abstract_variables
from t2i_common.parallel import CPU_FAST_COMPILE

VARIANTS = ("sd1", "sd2", "reference")

# Words of the prompts the tests and the shapes dataset use; everything in here becomes one token.
_WORDS = """a an and the of with in on photo picture image painting drawing cat dog frog bear bird elephant horse
lion monkey mouse rabbit turtle apple backpack balloon bench bow bowl car chair clock crown glasses suitcase
red green blue yellow purple orange white black brown gray pink circle square triangle star heart cross hexagon
diamond small large big tiny left right top bottom next to , . !""".split()


def tiny_clip_bpe(words: list[str] = _WORDS, max_merges: int = 420) -> tuple[dict[str, int], list[str]]:
  """A CLIP-layout (vocab, merges) learned on `words` (byte symbols, byte symbols + "</w>", merges, then
  <|startoftext|> and <|endoftext|>): "!" is id 0 (SD 2.x's pad token), <|endoftext|> the last id."""
  return learn_clip_bpe(Counter(words), max_merges)


def write_tiny_tokenizer(folder: str, pad_token: str = "<|endoftext|>", layout: str = "saved") -> str:
  """Writes a tiny CLIP tokenizer folder and returns it.

  layout "saved": transformers' own CLIPTokenizer(vocab, merges).save_pretrained (transformers 5 writes
  tokenizer.json + tokenizer_config.json), so a format change of a new release shows up here; "vocab": the Hub's
  SD 1.x/2.x layout (vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json), which
  save_pretrained no longer writes.
  """
  vocab, merges = tiny_clip_bpe()
  return write_tokenizer_folder(folder, vocab, merges, pad_token=pad_token, layout=layout)


def write_tokenizer_folder(folder: str, vocab: dict[str, int], merges: list[str], *, pad_token: str,
                           layout: str = "saved") -> str:
  """A CLIP tokenizer folder of `layout` ("saved" or "vocab", see write_tiny_tokenizer) for vocab and merges."""
  if layout == "vocab":
    from diffusion_jax.clip_vocab import write_clip_tokenizer
    write_clip_tokenizer(folder, vocab, merges, pad_token=pad_token)
    return folder
  if layout != "saved":
    raise ValueError(f"layout {layout!r}: use 'saved' or 'vocab'.")
  from transformers import CLIPTokenizer
  tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], pad_token=pad_token,
                      model_max_length=77)
  tok.save_pretrained(folder)
  return folder


def tiny_configs(variant: str) -> dict:
  """Keyword arguments of the UNet, VAE, CLIP text model and scheduler of a variant."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown tiny SD variant {variant!r}; choose one of {VARIANTS}.")
  vocab, _ = tiny_clip_bpe()
  text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_attention_heads=4,
              num_hidden_layers=5, max_position_embeddings=77, layer_norm_eps=1e-5, projection_dim=32,
              bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
              pad_token_id=vocab["<|endoftext|>"])
  beta = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
  if variant == "sd1":
    unet = dict(sample_size=16, block_out_channels=(32, 64, 64), layers_per_block=2,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
    vae = dict(block_out_channels=(32, 64), layers_per_block=2, latent_channels=4, sample_size=32,
               down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    text.update(hidden_act="quick_gelu")
    sched = ("PNDMScheduler", dict(beta, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1))
    pad = "<|endoftext|>"
  elif variant == "sd2":
    unet = dict(sample_size=16, block_out_channels=(32, 64, 64), layers_per_block=1,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=48, attention_head_dim=(2, 4, 4), use_linear_projection=True,
                upcast_attention=True, norm_num_groups=16)
    vae = dict(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, sample_size=32,
               norm_num_groups=16,
               down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    text.update(hidden_act="gelu", hidden_size=48, num_attention_heads=4, intermediate_size=64,
                num_hidden_layers=4, pad_token_id=0)
    sched = ("DDIMScheduler", dict(beta, prediction_type="v_prediction", clip_sample=False,
                                   set_alpha_to_one=False, steps_offset=1))
    pad = "!"
  else:
    unet = dict(sample_size=32, block_out_channels=(32, 64), layers_per_block=1, in_channels=4, out_channels=4,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                attention_head_dim=(2, 4), use_linear_projection=True)
    vae = dict(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4, sample_size=128,
               down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    text.update(hidden_act="gelu", vocab_size=1000)
    sched = ("DDIMScheduler", dict(beta, clip_sample=False, set_alpha_to_one=False, steps_offset=1))
    pad = "<|endoftext|>"
  return dict(unet=unet, vae=vae, text=text, scheduler=sched, pad_token=pad)


def build_tiny_models(variant: str, seed: int = 0):
  """(unet, vae, text_encoder) PyTorch modules with seeded random weights, in eval mode."""
  import torch
  from diffusers import AutoencoderKL, UNet2DConditionModel
  from transformers import CLIPTextConfig, CLIPTextModel
  cfg = tiny_configs(variant)
  torch.manual_seed(seed)
  unet = UNet2DConditionModel(**cfg["unet"]).eval()
  torch.manual_seed(seed + 1)
  vae = AutoencoderKL(**cfg["vae"]).eval()
  torch.manual_seed(seed + 2)
  text = CLIPTextModel(CLIPTextConfig(**cfg["text"])).eval()
  randomize_norms(unet, vae, text, seed=seed)
  return unet, vae, text


def randomize_norms(*modules, seed: int) -> None:
  """Gives norm layers non-trivial scales/shifts so parity tests would notice swapped or dropped ones."""
  import torch
  g = torch.Generator().manual_seed(seed + 100)
  with torch.no_grad():
    for m in modules:
      for sub in m.modules():
        if isinstance(sub, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and sub.weight is not None:
          sub.weight.add_(0.1 * torch.randn(sub.weight.shape, generator=g))
          sub.bias.add_(0.1 * torch.randn(sub.bias.shape, generator=g))


def write_tiny_sd(tmpdir, variant: str = "sd1", seed: int = 0) -> str:
  """Writes a complete tiny diffusers StableDiffusionPipeline folder under `tmpdir`; returns its path."""
  import diffusers
  from diffusers import StableDiffusionPipeline
  from transformers import CLIPTokenizer
  cfg = tiny_configs(variant)
  folder = os.path.join(str(tmpdir), f"tiny-{variant}")
  unet, vae, text = build_tiny_models(variant, seed)
  vocab, merges = tiny_clip_bpe()
  tokenizer = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], pad_token=cfg["pad_token"],
                            model_max_length=77)
  sched_cls, sched_kwargs = cfg["scheduler"]
  scheduler = getattr(diffusers, sched_cls)(**sched_kwargs)
  pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
  pipe.save_pretrained(folder)  # whatever layout the installed diffusers/transformers write: users' folders
  return folder


@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory) -> str:
  """Path of a tiny SD-1.x-style diffusers folder shared by the session."""
  pytest.importorskip("diffusers", reason="tiny SD folders are written with diffusers")
  return write_tiny_sd(tmp_path_factory.mktemp("sd1"), "sd1")


@pytest.fixture(scope="session")
def tiny_sd2(tmp_path_factory) -> str:
  """Path of a tiny SD-2.x-style diffusers folder shared by the session."""
  pytest.importorskip("diffusers", reason="tiny SD folders are written with diffusers")
  return write_tiny_sd(tmp_path_factory.mktemp("sd2"), "sd2")


@pytest.fixture(scope="session")
def tiny_sd_reference(tmp_path_factory) -> str:
  """Path of the REFERENCE.md section 2 (diffusers Attend-and-Excite test) folder."""
  pytest.importorskip("diffusers", reason="tiny SD folders are written with diffusers")
  return write_tiny_sd(tmp_path_factory.mktemp("sdref"), "reference")


# XLA options that roughly halve CPU compile time of the tiny models (what jax_disable_most_optimizations sets,
# but per function, so other tests in the same process are unaffected): jax.jit(f, compiler_options=FAST_COMPILE).
FAST_COMPILE = CPU_FAST_COMPILE


def random_variables(module, seed: int = 0) -> dict:
  """Random {"params": ...} for one of our diffusion models in well under a second on CPU.

  Flax's own init (jit of module.init) takes ~10 s of XLA compile for even a tiny UNet on CPU, mostly for the
  truncated-normal initializers; tests that only need plausible weights use this instead: kernels N(0, 1/fan_in),
  embeddings N(0, 1), norm scales 1 + N(0, 0.1^2), biases N(0, 0.1^2).
  """
  import numpy as np
  from flax import traverse_util

  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(abstract_variables(module)["params"])
  out = {}
  for path, leaf in flat.items():
    shape, kind = tuple(leaf.shape), path[-1]
    z = rng.standard_normal(shape).astype(np.float32)
    if kind == "kernel":
      z /= np.sqrt(max(1, int(np.prod(shape[:-1]))))
    elif kind == "scale":
      z = 1.0 + 0.1 * z
    elif kind == "bias":
      z *= 0.1
    out[path] = z.astype(leaf.dtype)
  return {"params": traverse_util.unflatten_dict(out)}
