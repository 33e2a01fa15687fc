"""Tiny random transformers CLIPModel folders for tests (written with CLIPModel.save_pretrained).

`write_tiny_clip(folder)` writes config.json + model.safetensors and, beside them, the tiny CLIP BPE tokenizer of
tests/diffusion_fixtures.py (vocab.json, merges.txt), so the text tower's vocabulary is that tokenizer's.
Image tower: 32 x 32 images, 8 x 8 patches. Needs torch and transformers.
"""
from __future__ import annotations

from diffusion_fixtures import randomize_norms, tiny_clip_bpe, write_tiny_tokenizer

IMAGE_SIZE = 32


def tiny_clip_config(**text_overrides):
  import transformers
  vocab, _ = tiny_clip_bpe()
  text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
              eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])
  text.update(text_overrides)
  vision = dict(hidden_size=48, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                image_size=IMAGE_SIZE, patch_size=8, hidden_act="gelu")
  return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24,
                                 logit_scale_init_value=2.3)


def write_tiny_clip(folder, seed: int = 0, tokenizer: bool = True, **text_overrides) -> str:
  """A random CLIPModel folder (norm layers randomised so that a dropped or swapped one shows); returns its path."""
  import torch
  import transformers
  torch.manual_seed(seed)
  model = transformers.CLIPModel(tiny_clip_config(**text_overrides)).eval()
  randomize_norms(model, seed=seed)
  model.save_pretrained(str(folder))
  if tokenizer:
    write_tiny_tokenizer(str(folder))
  return str(folder)
