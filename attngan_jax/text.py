"""Caption text for AttnGAN: tokenisation, vocabulary and fixed-length token arrays.

Behaviour follows the reference (taoxugit/AttnGAN code/datasets.py):
- tokenise: replace the double replacement character with a space, lowercase, regex `\\w+` tokens
  (NLTK's RegexpTokenizer(r'\\w+') is re.findall), drop non-ASCII characters inside tokens, drop tokens that
  become empty;
- vocabulary: index 0 is `<end>` (the padding id); every word of the train + test captions follows in order
  of first appearance (the reference iterates a dict, so its order is arbitrary: released checkpoints need the
  released captions.pickle, which `Vocabulary.from_captions_pickle` reads);
- fixed length WORDS_NUM: shorter captions are zero-padded; longer ones keep a random subset of WORDS_NUM
  positions in their original order.

Unknown words (a caption not seen when the vocabulary was built) do not occur in the reference, whose
vocabulary covers train and test. Here they are dropped and counted (`TextTransform.unknown_words`), with a
warning the first time. A caption with no known word raises ValueError: the LSTM needs at least one token.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
from typing import Iterable, Optional, Sequence

import numpy as np

END_TOKEN = "<end>"
_WORD_RE = re.compile(r"\w+")
_log = logging.getLogger(__name__)


def tokenize(caption: str) -> list[str]:
  """Splits a caption into lowercase ASCII word tokens exactly as the reference does."""
  if not isinstance(caption, str):
    raise TypeError(f"caption must be a str, got {type(caption).__name__}: {caption!r}")
  caption = caption.replace("\ufffd\ufffd", " ")
  tokens = []
  for token in _WORD_RE.findall(caption.lower()):
    token = token.encode("ascii", "ignore").decode("ascii")
    if token:
      tokens.append(token)
  return tokens


class Vocabulary:
  """Word <-> id map with `<end>` = 0 as padding."""

  def __init__(self, words: Sequence[str]):
    words = list(words)
    if not words or words[0] != END_TOKEN:
      raise ValueError(f"a vocabulary must start with {END_TOKEN!r} (id 0, the padding id); got {words[:3]}")
    if len(set(words)) != len(words):
      seen, dups = set(), []
      for w in words:
        if w in seen:
          dups.append(w)
        seen.add(w)
      raise ValueError(f"duplicate words in the vocabulary: {dups[:10]}")
    self.ixtoword = words
    self.wordtoix = {w: i for i, w in enumerate(words)}

  def __len__(self) -> int:
    return len(self.ixtoword)

  def __contains__(self, word: str) -> bool:
    return word in self.wordtoix

  def __eq__(self, other) -> bool:
    return isinstance(other, Vocabulary) and self.ixtoword == other.ixtoword

  @property
  def n_words(self) -> int:
    return len(self.ixtoword)

  @classmethod
  def build(cls, captions: Iterable[str | Sequence[str]]) -> "Vocabulary":
    """Vocabulary of every word in `captions` (raw strings or token lists), in order of first appearance."""
    words = {END_TOKEN: None}
    for caption in captions:
      tokens = tokenize(caption) if isinstance(caption, str) else caption
      for token in tokens:
        words.setdefault(token, None)
    return cls(list(words))

  def encode(self, tokens: Sequence[str]) -> tuple[list[int], int]:
    """Word ids of the known tokens, and how many unknown tokens were dropped."""
    ids = [self.wordtoix[t] for t in tokens if t in self.wordtoix]
    return ids, len(tokens) - len(ids)

  def decode(self, ids: Iterable[int], length: Optional[int] = None) -> list[str]:
    """Words of `ids`, stopping at `length` or at the first padding id."""
    out = []
    for k, i in enumerate(ids):
      if (length is not None and k >= length) or (length is None and int(i) == 0):
        break
      out.append(self.ixtoword[int(i)])
    return out

  # Our own format: a JSON list of words, id = position.
  def save_json(self, path: str) -> None:
    with open(path, "w") as f:
      json.dump({"words": self.ixtoword}, f)

  @classmethod
  def load_json(cls, path: str) -> "Vocabulary":
    if not os.path.isfile(path):
      raise FileNotFoundError(f"vocabulary file {path!r} does not exist.")
    with open(path) as f:
      data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("words"), list):
      raise ValueError(f"{path!r} is not a vocabulary JSON file (expected {{\"words\": [...]}}).")
    return cls(data["words"])

  @classmethod
  def from_captions_pickle(cls, path: str) -> tuple["Vocabulary", list[list[int]], list[list[int]]]:
    """Reads the reference's captions.pickle: (vocabulary, train captions as ids, test captions as ids).

    The file is a Python 2 pickle of [train_captions, test_captions, ixtoword, wordtoix].
    """
    if not os.path.isfile(path):
      raise FileNotFoundError(f"captions file {path!r} does not exist.")
    with open(path, "rb") as f:
      try:
        data = pickle.load(f, encoding="latin1")
      except Exception as e:
        raise ValueError(f"{path!r} is not a readable captions.pickle: {e}") from e
    if not isinstance(data, (list, tuple)) or len(data) != 4:
      raise ValueError(f"{path!r} should hold [train_captions, test_captions, ixtoword, wordtoix]; "
                       f"got a {type(data).__name__} of length {len(data) if hasattr(data, '__len__') else '?'}.")
    train, test, ixtoword, wordtoix = data
    n = len(ixtoword)
    if sorted(ixtoword) != list(range(n)):
      raise ValueError(f"{path!r}: ixtoword keys are not 0..{n - 1}.")
    words = [_as_str(ixtoword[i]) for i in range(n)]
    vocab = cls(words)
    for w, i in wordtoix.items():
      if vocab.wordtoix.get(_as_str(w)) != i:
        raise ValueError(f"{path!r}: wordtoix[{w!r}] = {i} disagrees with ixtoword.")
    return vocab, [list(map(int, c)) for c in train], [list(map(int, c)) for c in test]


def _as_str(w) -> str:
  return w.decode("latin1") if isinstance(w, bytes) else str(w)


def fit_length(ids: Sequence[int], words_num: int,
               rng: Optional[np.random.Generator]) -> tuple[np.ndarray, int]:
  """Pads or subsamples word ids to `words_num` as the reference's get_caption does.

  Longer captions keep a random, in-order subset of `words_num` positions drawn with `rng`; with rng=None
  (deterministic evaluation) they keep their first `words_num` words.
  """
  if words_num < 1:
    raise ValueError(f"words_num must be >= 1, got {words_num}.")
  ids = np.asarray(ids, dtype=np.int32)
  out = np.zeros((words_num,), np.int32)
  n = len(ids)
  if n <= words_num:
    out[:n] = ids
    return out, n
  keep = np.arange(words_num) if rng is None else np.sort(rng.permutation(n)[:words_num])
  out[:] = ids[keep]
  return out, words_num


class TextTransform:
  """`caption, rng -> {"tokens": int32[words_num], "length": int32}` for the data loader's text hook."""

  def __init__(self, vocab: Vocabulary, words_num: int):
    if words_num < 1:
      raise ValueError(f"words_num must be >= 1, got {words_num}.")
    self.vocab = vocab
    self.words_num = words_num
    self.unknown_words = 0  # tokens dropped because the vocabulary lacks them (per process/worker)

  def __call__(self, caption: str, rng: Optional[np.random.Generator] = None) -> dict[str, np.ndarray]:
    tokens = tokenize(caption)
    ids, unknown = self.vocab.encode(tokens)
    if unknown:
      if self.unknown_words == 0:
        missing = [t for t in tokens if t not in self.vocab]
        _log.warning("dropping words missing from the vocabulary (e.g. %s in %r); further drops are only "
                     "counted in TextTransform.unknown_words.", missing[:5], caption)
      self.unknown_words += unknown
    if not ids:
      raise ValueError(f"caption {caption!r} has no word in the vocabulary ({len(tokens)} tokens, "
                       f"{unknown} unknown): the text encoder needs at least one word. Fix or drop the caption.")
    out, length = fit_length(ids, self.words_num, rng)
    return {"tokens": out, "length": np.int32(length)}

  def batch(self, captions: Sequence[str], rng: Optional[np.random.Generator] = None) -> dict[str, np.ndarray]:
    """Stacked transform of several captions (e.g. user prompts at sampling time)."""
    items = [self(c, rng) for c in captions]
    return {"tokens": np.stack([x["tokens"] for x in items]),
            "length": np.asarray([x["length"] for x in items], np.int32)}
