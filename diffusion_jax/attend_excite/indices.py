"""Which tokens Attend-and-Excite excites, and the checks on its arguments (clear errors, nothing silent).

    get_indices(tokenizer, "a cat and a frog")          # {0: '<|startoftext|>', 1: 'a</w>', 2: 'cat</w>', ...}
    subject_indices(tokenizer, "a cat and a frog", ["cat", "frog"])   # [2, 5]

Subject words -> token positions (position 0 is <|startoftext|>), defined as follows:
- a word is matched case-insensitively against the prompt's whitespace-separated words, punctuation around
  them ignored ("cat," matches "cat");
- a word that the tokenizer splits into several tokens is represented by its last token that is not
  punctuation: CLIP's text encoder is causal, so only that token has seen the whole word;
- a word that occurs several times in the prompt: its k-th mention in `subjects` takes its k-th occurrence
  in the prompt (subjects ["cat", "cat"] on "a cat and a cat" -> [2, 5]); more mentions than occurrences is
  an error.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

_PUNCT = ".,!?;:'\"()[]{}"


def _id_to_token(tokenizer: Any) -> dict[int, str]:
  table = getattr(tokenizer, "_id_to_token", None)
  return table if table is not None else {i: t for t, i in tokenizer.vocab.items()}


def prompt_tokens(tokenizer: Any, prompt: str) -> list[str]:
  """The prompt's tokens as strings, <|startoftext|> ... <|endoftext|>, without padding (truncated to the
  tokenizer's limit as the model sees it)."""
  batch = tokenizer([prompt], warn_truncation=False)
  n = int(batch.lengths[0])
  table = _id_to_token(tokenizer)
  return [table[int(i)] for i in batch.input_ids[0, :n]]


def get_indices(tokenizer: Any, prompt: str) -> dict[int, str]:
  """{position: token} of the prompt's tokens (as diffusers' `get_indices`), to choose token_indices from."""
  return dict(enumerate(prompt_tokens(tokenizer, prompt)))


def _describe(tokenizer: Any, prompt: str) -> str:
  return f"prompt {prompt!r} has tokens {get_indices(tokenizer, prompt)}"


def subject_indices(tokenizer: Any, prompt: str, subjects: Sequence[str]) -> list[int]:
  """Token positions of the subject words in the prompt (see the module docstring for the rules)."""
  if isinstance(subjects, str) or not subjects:
    raise ValueError(f"subjects must be a non-empty list of words, got {subjects!r}.")
  table = tokenizer.word_token_positions(prompt)
  words = [w.lower().strip(_PUNCT) for w, _ in table]
  ids = tokenizer([prompt], warn_truncation=False).input_ids[0]
  lookup = _id_to_token(tokenizer)
  used: dict[str, int] = {}
  out = []
  for subject in subjects:
    key = str(subject).lower().strip(_PUNCT)
    if not key or any(ch.isspace() for ch in key):
      raise ValueError(f"subject {subject!r} must be a single word of the prompt {prompt!r} (words: "
                       f"{[w for w, _ in table]}).")
    hits = [pos for w, (_, pos) in zip(words, table) if w == key and pos]
    k = used.get(key, 0)
    if k >= len(hits):
      what = "is not in" if not hits else f"occurs {len(hits)} time(s) in"
      raise ValueError(f"subject {subject!r} {what} the prompt {prompt!r}; its words are "
                       f"{[w for w, _ in table]} ({_describe(tokenizer, prompt)}).")
    used[key] = k + 1
    positions = hits[k]
    wordlike = [p for p in positions if any(ch.isalnum() for ch in lookup[int(ids[p])].replace("</w>", ""))]
    out.append((wordlike or positions)[-1])
  return out


def last_position(tokenizer: Any, prompt: str, sd_2_1: bool) -> int:
  """End (exclusive) of the token positions the token softmax covers: position 76 is dropped (SD 1.x
  convention, diffusers' port); with sd_2_1 the prompt's own <|endoftext|> and the padding are dropped."""
  if sd_2_1:
    return int(tokenizer([prompt], warn_truncation=False).lengths[0]) - 1
  return tokenizer.model_max_length - 1


def normalize_token_indices(tokenizer: Any, prompts: Sequence[str],
                            token_indices: Union[None, Sequence[int], Sequence[Sequence[int]]] = None,
                            subjects: Union[None, Sequence[str], Sequence[Sequence[str]]] = None, *,
                            sd_2_1: bool = False) -> list[list[int]]:
  """One list of checked token positions per prompt, from token_indices (a list for every prompt, or one list
  per prompt) or subjects (words, likewise)."""
  if (token_indices is None) == (subjects is None):
    raise ValueError("give either token_indices or subjects (for Attend-and-Excite), not both.")
  given = token_indices if token_indices is not None else subjects
  name = "token_indices" if token_indices is not None else "subjects"
  atom = (int, np.integer) if token_indices is not None else (str,)
  if isinstance(given, (str, bytes)) or not isinstance(given, Sequence) or not given:
    raise ValueError(f"{name} must be a non-empty list (or one list per prompt), got {given!r}.")
  if all(isinstance(x, atom) for x in given):
    per_prompt = [list(given)] * len(prompts)
  elif all(isinstance(x, Sequence) and not isinstance(x, (str, bytes)) for x in given):
    per_prompt = [list(x) for x in given]
    if len(per_prompt) != len(prompts):
      raise ValueError(f"{name} has {len(per_prompt)} lists for {len(prompts)} prompts; give one list per "
                       f"prompt or a single list for all.")
  else:
    raise ValueError(f"{name} must be a list of {'ints' if token_indices is not None else 'words'} or a list of "
                     f"such lists, got {given!r}.")
  out = []
  for prompt, items in zip(prompts, per_prompt):
    if not items:
      raise ValueError(f"{name} for prompt {prompt!r} is empty; {_describe(tokenizer, prompt)}.")
    if subjects is not None:
      if not all(isinstance(x, str) for x in items):
        raise ValueError(f"subjects must be words (strings), got {items!r}.")
      items = subject_indices(tokenizer, prompt, items)
    elif not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in items):
      raise ValueError(f"token_indices must be integers, got {items!r}.")
    out.append(check_indices(tokenizer, prompt, [int(x) for x in items], sd_2_1=sd_2_1))
  return out


def check_indices(tokenizer: Any, prompt: str, indices: Sequence[int], *, sd_2_1: bool = False) -> list[int]:
  """Raises unless every index is a real token of the prompt other than <|startoftext|> / <|endoftext|>."""
  n_real = int(tokenizer([prompt], warn_truncation=False).lengths[0])  # with <|startoftext|> and <|endoftext|>
  valid = f"valid choices are 1 .. {n_real - 2}" if n_real > 2 else "the prompt has no tokens to choose"
  for i in indices:
    if i == 0:
      problem = "is <|startoftext|> (position 0), which Attend-and-Excite drops"
    elif i < 0 or i >= tokenizer.model_max_length:
      problem = f"is out of range (0 .. {tokenizer.model_max_length - 1})"
    elif i == n_real - 1:
      problem = "is the prompt's <|endoftext|>"
    elif i >= n_real:
      problem = "is on padding, past the prompt's <|endoftext|>"
    else:
      continue
    raise ValueError(f"token index {i} {problem}: {_describe(tokenizer, prompt)}; {valid}.")
  if len(set(indices)) != len(indices):
    raise ValueError(f"token indices {list(indices)} repeat a position: {_describe(tokenizer, prompt)}.")
  last = last_position(tokenizer, prompt, sd_2_1)
  assert all(i < last for i in indices)  # n_real - 1 <= last by construction
  return list(indices)


def padded_indices(indices: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
  """Ragged per-image indices -> (int32 [B, K] padded with 1, bool mask [B, K])."""
  k = max(len(x) for x in indices)
  arr = np.ones((len(indices), k), np.int32)
  mask = np.zeros((len(indices), k), bool)
  for b, row in enumerate(indices):
    arr[b, :len(row)] = row
    mask[b, :len(row)] = True
  return arr, mask


def check_thresholds(thresholds: Optional[Mapping[int, float]], num_timesteps: int,
                     num_inference_steps: int) -> dict[int, float]:
  """Threshold steps must be loop indices 0 .. num_timesteps - 1 (the scheduler's timesteps: PNDM has one more
  than num_inference_steps); values are floats."""
  thresholds = dict(thresholds or {})
  bad = [k for k in thresholds if not isinstance(k, (int, np.integer)) or isinstance(k, bool)
         or not 0 <= int(k) < num_timesteps]
  if bad:
    raise ValueError(f"thresholds at steps {sorted(map(str, bad))} are outside the denoising loop: with "
                     f"num_inference_steps={num_inference_steps} the scheduler has {num_timesteps} timesteps, so "
                     f"threshold steps must be integers 0 .. {num_timesteps - 1}.")
  out = {}
  for k, v in thresholds.items():
    try:
      out[int(k)] = float(v)
    except (TypeError, ValueError):
      raise ValueError(f"threshold at step {k} must be a number, got {v!r}.") from None
    if not np.isfinite(out[int(k)]):
      raise ValueError(f"threshold at step {k} must be finite, got {v!r}.")
  return out


def cross_attention_resolutions(unet_config: Any, latent_h: int, latent_w: int) -> list[tuple[int, int]]:
  """(height, width) of every cross-attention layer of the UNet for latents of that size, sorted, unique."""
  n = len(unet_config.block_out_channels)
  sizes = set()
  for i, kind in enumerate(unet_config.down_block_types):
    if kind == "CrossAttnDownBlock2D":
      sizes.add((latent_h >> i, latent_w >> i))
  sizes.add((latent_h >> (n - 1), latent_w >> (n - 1)))  # the mid block has cross-attention
  for i, kind in enumerate(unet_config.up_block_types):
    if kind == "CrossAttnUpBlock2D":
      sizes.add((latent_h >> (n - 1 - i), latent_w >> (n - 1 - i)))
  return sorted(sizes, reverse=True)


def check_attn_res(attn_res: Any, unet_config: Any, latent_h: int, latent_w: int, height: int,
                   width: int) -> tuple[int, int]:
  """attn_res (int r = (r, r), (h, w), or None: diffusers' (ceil(height / 32), ceil(width / 32))) -> (h, w),
  checked against the UNet's cross-attention layers at this image size."""
  if attn_res is None:
    attn_res = (int(np.ceil(height / 32)), int(np.ceil(width / 32)))
  if isinstance(attn_res, (int, np.integer)):
    attn_res = (int(attn_res), int(attn_res))
  try:
    res = tuple(int(x) for x in attn_res)
  except (TypeError, ValueError):
    res = ()
  valid = cross_attention_resolutions(unet_config, latent_h, latent_w)
  if len(res) != 2 or res not in valid:
    raise ValueError(f"attn_res={attn_res!r} matches no cross-attention layer of this UNet at {height} x {width} "
                     f"px ({latent_h} x {latent_w} latents); valid choices (height, width): {valid}.")
  return res
