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

import json
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


# ----------------------------------------------------------------------------------------------------------
# Single-file checkpoints in the original CompVis / Stability layout, converted from a diffusers pipeline by
# the inverse of diffusers' own mapping (diffusers ships only the forward conversion in its package).

_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_to_ldm(name: str, config) -> str:
  lpb = config["layers_per_block"]
  fixed = {"conv_in.": "input_blocks.0.0.", "time_embedding.linear_1.": "time_embed.0.",
           "time_embedding.linear_2.": "time_embed.2.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
  for new, old in fixed.items():
    if name.startswith(new):
      return old + name[len(new):]
  parts = name.split(".")

  def resnet(rest):
    return ".".join([_UNET_RESNET.get(rest[0], rest[0])] + rest[1:])

  if parts[0] == "down_blocks":
    b = int(parts[1])
    if parts[2] == "downsamplers":
      return f"input_blocks.{1 + b * (lpb + 1) + lpb}.0.op." + ".".join(parts[5:])
    idx = 1 + b * (lpb + 1) + int(parts[3])
    return f"input_blocks.{idx}.0.{resnet(parts[4:])}" if parts[2] == "resnets" else \
        f"input_blocks.{idx}.1." + ".".join(parts[4:])
  if parts[0] == "mid_block":
    if parts[1] == "attentions":
      return "middle_block.1." + ".".join(parts[3:])
    return f"middle_block.{2 * int(parts[2])}.{resnet(parts[3:])}"
  if parts[0] == "up_blocks":
    b = int(parts[1])
    has_attn = config["up_block_types"][b] == "CrossAttnUpBlock2D"
    if parts[2] == "upsamplers":
      return f"output_blocks.{b * (lpb + 1) + lpb}.{2 if has_attn else 1}." + ".".join(parts[4:])
    idx = b * (lpb + 1) + int(parts[3])
    return f"output_blocks.{idx}.0.{resnet(parts[4:])}" if parts[2] == "resnets" else \
        f"output_blocks.{idx}.1." + ".".join(parts[4:])
  raise KeyError(f"no original-layout name for UNet tensor {name}")


def _vae_to_ldm(name: str, tensor, n_blocks: int):
  side, rest = name.split(".", 1)
  if rest.startswith("conv_norm_out."):
    return f"{side}.norm_out.{rest[len('conv_norm_out.'):]}", tensor
  if not rest.startswith(("mid_block", "down_blocks", "up_blocks")):
    return name, tensor
  parts = rest.split(".")
  leaf = parts[-1]
  if parts[0] == "mid_block":
    if parts[1] == "attentions":
      module = ".".join(parts[3:-1])
      # ldm's attention uses 1x1 convolutions: [C, C] -> [C, C, 1, 1]
      value = tensor[:, :, None, None] if tensor.ndim == 2 else tensor
      return f"{side}.mid.attn_1.{_VAE_ATTN[module]}.{leaf}", value
    inner = ".".join(parts[3:]).replace("conv_shortcut", "nin_shortcut")
    return f"{side}.mid.block_{int(parts[2]) + 1}.{inner}", tensor
  b = int(parts[1])
  ldm_b, word = (b, "down") if side == "encoder" else (n_blocks - 1 - b, "up")
  if parts[2] in ("downsamplers", "upsamplers"):
    return f"{side}.{word}.{ldm_b}.{word}sample." + ".".join(parts[4:]), tensor
  inner = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
  return f"{side}.{word}.{ldm_b}.block.{parts[3]}.{inner}", tensor


def _openclip_text(state: dict, hidden: int, seed: int) -> dict:
  """transformers CLIPTextModel tensors -> OpenCLIP's text tower (fused in_proj), plus what SD 2.x files carry
  besides: text_projection, logit_scale and one more residual block (SD 2.x uses the penultimate layer)."""
  import torch
  out, layers = {}, {}
  for name, t in state.items():
    name = name.removeprefix("text_model.")
    if name.endswith("position_ids"):
      continue
    simple = {"embeddings.token_embedding.weight": "token_embedding.weight",
              "embeddings.position_embedding.weight": "positional_embedding",
              "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
    if name in simple:
      out[simple[name]] = t
      continue
    _, _, i, module, *rest = name.split(".")
    sub = ".".join(rest)
    if module == "self_attn" and sub.split(".")[0] in ("q_proj", "k_proj", "v_proj"):
      layers.setdefault((int(i), sub.split(".")[1]), {})[sub[0]] = t
      continue
    ldm = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn": "attn", "mlp": "mlp"}[module]
    sub = sub.replace("fc1", "c_fc").replace("fc2", "c_proj")
    out[f"transformer.resblocks.{i}.{ldm}.{sub}"] = t
  for (i, kind), qkv in layers.items():
    out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]])
  n = 1 + max(i for i, _ in layers)
  g = torch.Generator().manual_seed(seed)
  device = out["token_embedding.weight"].device  # "meta" for shape-only modules
  for name in [k for k in out if k.startswith("transformer.resblocks.0.")]:
    out[name.replace("resblocks.0.", f"resblocks.{n}.")] = torch.randn(out[name].shape, generator=g).to(device)
  out["text_projection"] = torch.randn(hidden, hidden, generator=g).to(device)
  out["logit_scale"] = torch.tensor(4.6052)
  return out


def to_original_layout(folder: str) -> dict:
  """{name: torch tensor} of a diffusers SD 1.x/2.x folder in the original single-file layout: SD 1.x-style
  (CLIP text encoder, gelu or quick_gelu) under cond_stage_model.transformer., SD 2.x-style ("!" padding, as
  the OpenCLIP-based releases) under cond_stage_model.model., plus LatentDiffusion's schedule buffers."""
  from diffusers import AutoencoderKL, UNet2DConditionModel
  from transformers import CLIPTextModel
  unet = UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet"))
  vae = AutoencoderKL.from_pretrained(os.path.join(folder, "vae"))
  text = CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder"))
  with open(os.path.join(folder, "tokenizer", "tokenizer_config.json")) as f:
    openclip = json.load(f).get("pad_token") == "!"
  return original_layout_state(unet, vae, text, openclip)


def original_layout_state(unet, vae, text, openclip: bool) -> dict:
  """The single-file state dict of diffusers/transformers modules (see to_original_layout); works on modules
  built on torch's meta device too (names and shapes only)."""
  import torch
  out = {"model.diffusion_model." + _unet_to_ldm(k, unet.config): v for k, v in unet.state_dict().items()}
  n = len(vae.config.block_out_channels)
  for k, v in vae.state_dict().items():
    name, value = _vae_to_ldm(k, v, n)
    out["first_stage_model." + name] = value
  text_state = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in text.state_dict().items()}
  if openclip:
    out.update({"cond_stage_model.model." + k: v
                for k, v in _openclip_text(text_state, text.config.hidden_size, seed=7).items()})
  else:
    out.update({"cond_stage_model.transformer." + k: v for k, v in text_state.items()})
  betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
  out.update(betas=betas, alphas_cumprod=torch.cumprod(1 - betas, 0))
  return {k: v.detach().contiguous().clone() for k, v in out.items()}


def write_single_file(path: str, state: dict) -> str:
  """Writes `state` as .safetensors (the release format) or, for .ckpt, as ldm's training checkpoint
  {"state_dict": ..., "global_step": ...} with torch.save."""
  import torch
  if path.endswith(".safetensors"):
    from safetensors.torch import save_file
    save_file(state, path)
  else:
    torch.save({"state_dict": state, "global_step": 1234, "epoch": 3}, path)
  return path
