"""Learning a CLIP-layout BPE vocabulary from a dataset's captions (for text encoders trained from scratch).

The files written are exactly what SD folders ship in `tokenizer/` (vocab.json, merges.txt, tokenizer_config.json,
special_tokens_map.json), laid out as CLIP's: the 256 byte symbols, the same with "</w>", one entry per merge,
then <|startoftext|> and <|endoftext|>. So `diffusion_jax.tokenizer`, transformers' CLIPTokenizer and diffusers
read a trained shapes pipeline like any Stable Diffusion folder.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from typing import Iterable

from diffusion_jax.tokenizer import BOS, EOS, CLIPTokenizer, bytes_to_unicode
# CLIP's pre-tokenisation: specials, contractions, letter runs, single digits, other non-space runs.
_WORD_RE = re.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+",
                      re.IGNORECASE)


def caption_words(texts: Iterable[str]) -> Counter:
  """Word frequencies after CLIP's normalisation (lower case, whitespace collapsed) and pre-tokenisation."""
  counts = Counter()
  for text in texts:
    counts.update(_WORD_RE.findall(" ".join(text.lower().split())))
  return counts


def learn_clip_bpe(words: Iterable[str] | Counter, max_merges: int = 2000) -> tuple[dict[str, int], list[str]]:
  """Learns BPE merges (most frequent pair first, ties broken by the pair) and returns (vocab, merges).

  Learning stops when every word is one symbol or after max_merges; "!" is id 0 (SD 2.x's pad token) and
  <|endoftext|> is the last id, as in CLIP.
  """
  counts = words if isinstance(words, Counter) else Counter(words)
  byte_enc = bytes_to_unicode()
  symbols = Counter()
  for word, freq in counts.items():
    chars = [byte_enc[b] for b in word.encode("utf-8")]
    if chars:
      chars[-1] += "</w>"
      symbols[tuple(chars)] += freq
  merges: list[tuple[str, str]] = []
  while len(merges) < max_merges:
    pairs = Counter()
    for sym, freq in symbols.items():
      for a, b in zip(sym[:-1], sym[1:]):
        pairs[(a, b)] += freq
    if not pairs:
      break
    best = min(pairs, key=lambda p: (-pairs[p], p))
    merges.append(best)
    merged = Counter()
    for sym, freq in symbols.items():
      out, i = [], 0
      while i < len(sym):
        if i + 1 < len(sym) and (sym[i], sym[i + 1]) == best:
          out.append(sym[i] + sym[i + 1])
          i += 2
        else:
          out.append(sym[i])
          i += 1
      merged[tuple(out)] += freq
    symbols = merged
  tokens = list(byte_enc.values())
  tokens += [t + "</w>" for t in tokens]
  tokens += ["".join(m) for m in merges]
  tokens += [BOS, EOS]
  vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
  return vocab, [f"{a} {b}" for a, b in merges]


def write_clip_tokenizer(folder: str, vocab: dict[str, int], merges: list[str], *, pad_token: str = EOS,
                         model_max_length: int = 77) -> CLIPTokenizer:
  """Writes a CLIPTokenizer folder (vocab.json, merges.txt and the transformers config files); returns it loaded."""
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
    json.dump(vocab, f, ensure_ascii=False)
  with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
  tokenizer = CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"),
                            model_max_length=model_max_length, pad_token=pad_token)
  tokenizer.save(folder)
  return tokenizer
