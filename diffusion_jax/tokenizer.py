"""CLIP's byte-level BPE tokenizer for Stable Diffusion folders, built on the `tokenizers` library.

    tok = CLIPTokenizer.from_folder("sd-folder/tokenizer")
    batch = tok(["a photo of a cat", "a dog"])       # ids/attention_mask int32 [2, 77], lengths [2]
    tok.word_token_positions("a cat and a frog")     # [("a", [1]), ("cat", [2]), ("and", [3]), ...]

A tokenizer folder comes in one of two layouts, both read here:
- vocab.json + merges.txt (the Hub's SD 1.x/2.x folders, transformers < 5's save_pretrained);
- tokenizer.json (the `tokenizers` serialisation; transformers >= 5's save_pretrained writes only this one and
  tokenizer_config.json).
Either way the BPE vocabulary and merges are taken from the files and the rest of the pipeline is CLIP's, as
transformers' CLIPTokenizer builds it: NFC, whitespace runs -> one space, lowercase; CLIP's split regex;
byte-level symbols; "</w>" marks the end of a word; <|startoftext|> ... <|endoftext|> around each text;
sequences truncated to model_max_length (77) keeping the final <|endoftext|>, with a warning that quotes the
dropped text. Padding uses the folder's pad token: <|endoftext|> in SD 1.x, "!" (id 0) in SD 2.x.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
import warnings
from typing import Optional, Sequence, Union

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


@dataclasses.dataclass
class TokenizedBatch:
  """input_ids and attention_mask int32 [B, max_length]; lengths int32 [B]: real tokens incl. BOS and EOS."""
  input_ids: np.ndarray
  attention_mask: np.ndarray
  lengths: np.ndarray


class CLIPTokenizerFormatError(ValueError):
  """A tokenizer folder or file that is not a CLIP BPE tokenizer of either layout."""


class CLIPTokenizer:
  """CLIP BPE from a vocabulary and merges. Call it on a string or a list of strings.

  vocab: {token: id} or the path of a vocab.json; merges: [(a, b), ...] / ["a b", ...] or the path of a
  merges.txt. Folders of either layout: `from_folder`.
  """

  def __init__(self, vocab: Union[str, dict], merges: Union[str, Sequence], *, model_max_length: int = 77,
               pad_token: str = EOS, bos_token: str = BOS, eos_token: str = EOS, unk_token: str = EOS,
               source: Optional[str] = None):
    if isinstance(vocab, str):
      source = source or vocab
      vocab = _read_vocab_json(vocab)
    if isinstance(merges, str):
      merges = _read_merges_txt(merges)
    self.source = source or "the vocabulary"
    self.vocab: dict[str, int] = dict(vocab)
    self.merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    bad = [m for m in self.merges if len(m) != 2]
    if bad:
      raise CLIPTokenizerFormatError(f"{self.source}: merges must be pairs of symbols; got {bad[:3]}.")
    for name, tok in (("pad_token", pad_token), ("bos_token", bos_token), ("eos_token", eos_token),
                      ("unk_token", unk_token)):
      if tok not in self.vocab:
        raise ValueError(f"{name} {tok!r} is not in the vocabulary of {self.source}; check tokenizer_config.json "
                         "/ special_tokens_map.json.")
    self.model_max_length = model_max_length
    self.pad_token, self.bos_token, self.eos_token, self.unk_token = pad_token, bos_token, eos_token, unk_token
    self.pad_token_id, self.bos_token_id = self.vocab[pad_token], self.vocab[bos_token]
    self.eos_token_id = self.vocab[eos_token]
    tk = Tokenizer(BPE(vocab=self.vocab, merges=self.merges, continuing_subword_prefix="", end_of_word_suffix="</w>",
                       unk_token=unk_token, fuse_unk=False))
    tk.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                          normalizers.Lowercase()])
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tk.decoder = decoders.ByteLevel()
    # Special tokens are matched in the raw text before BPE, as transformers does; that includes the pad token, so
    # with SD 2.x's pad "!" every "!" in a prompt becomes id 0 (what diffusers' SD 2 pipelines feed the model).
    tk.add_special_tokens(list(dict.fromkeys([bos_token, eos_token, pad_token, unk_token])))
    self._tk = tk
    self._id_to_token = {i: t for t, i in self.vocab.items()}

  @classmethod
  def from_folder(cls, folder: str, **overrides) -> "CLIPTokenizer":
    """Reads a tokenizer folder of either layout (vocab.json + merges.txt, or tokenizer.json; the former wins
    when both are present, as they hold the same vocabulary) and the special tokens of tokenizer_config.json /
    special_tokens_map.json.

    As in transformers, special_tokens_map.json overrides tokenizer_config.json unless the latter was written
    with an `added_tokens_decoder` (then it is the only source): SD 2.x folders say pad_token "<|endoftext|>"
    in tokenizer_config.json and "!" in special_tokens_map.json, and pad with "!".
    """
    if not os.path.isdir(folder):
      raise FileNotFoundError(f"tokenizer folder {folder!r} does not exist (expected vocab.json + merges.txt or "
                              "tokenizer.json, as in an SD folder's tokenizer/).")
    settings: dict = {}
    config = _read_json(os.path.join(folder, "tokenizer_config.json"))
    sources = [config]
    if "added_tokens_decoder" not in config:
      sources.append(_read_json(os.path.join(folder, "special_tokens_map.json")))
    for raw in sources:
      for key in ("pad_token", "bos_token", "eos_token", "unk_token", "model_max_length"):
        value = raw.get(key)
        if isinstance(value, dict):  # serialised AddedToken
          value = value.get("content")
        if value is not None:
          settings[key] = value
    if settings.get("model_max_length", 77) > 10**6:  # transformers' "no limit" placeholder
      settings.pop("model_max_length")
    settings.update(overrides)
    vocab_file, merges_file = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    json_file = os.path.join(folder, "tokenizer.json")
    if os.path.isfile(vocab_file) and os.path.isfile(merges_file):
      return cls(vocab_file, merges_file, source=folder, **settings)
    if os.path.isfile(json_file):
      vocab, merges = read_tokenizer_json(json_file)
      return cls(vocab, merges, source=json_file, **settings)
    present = sorted(os.listdir(folder))
    raise CLIPTokenizerFormatError(
        f"{folder!r} is not a CLIP tokenizer folder: expected vocab.json + merges.txt (the Hub's SD folders) or "
        f"tokenizer.json (transformers' save_pretrained); found {present or 'nothing'}.")

  @classmethod
  def from_bpe_file(cls, path: str, **settings) -> "CLIPTokenizer":
    """CLIP's tokenizer from OpenAI's `bpe_simple_vocab_16e6.txt.gz` (shipped by open_clip_torch): the first
    48,894 merges after the header line; the vocabulary is the 256 byte symbols, the same with "</w>", one entry
    per merge, then <|startoftext|> and <|endoftext|> (49,408 tokens, SD 1.x's and 2.x's)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
      merges = f.read().split("\n")[1:49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    return cls({t: i for i, t in enumerate(tokens)}, merges, source=path, **settings)

  def save(self, folder: str) -> None:
    """Writes vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json: the Hub's layout, which
    transformers 4 and 5 (hence diffusers) and `from_folder` read."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
      json.dump(self.vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
      f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges))
    special = dict(bos_token=self.bos_token, eos_token=self.eos_token, pad_token=self.pad_token,
                   unk_token=self.unk_token)
    with open(os.path.join(folder, "special_tokens_map.json"), "w", encoding="utf-8") as f:
      json.dump(special, f, indent=2)
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
      json.dump(dict(special, tokenizer_class="CLIPTokenizer", model_max_length=self.model_max_length,
                     do_lower_case=True), f, indent=2)

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)

  def tokenize(self, text: str) -> list[int]:
    """Ids of the text's BPE tokens, without BOS/EOS."""
    return self._tk.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    """Text of ids (BOS, EOS and padding dropped); words separated by single spaces."""
    skip = {self.bos_token_id, self.eos_token_id, self.pad_token_id}
    text = self._tk.decode([int(i) for i in ids if int(i) not in skip], skip_special_tokens=True)
    return " ".join(text.replace("</w>", " ").split())

  def __call__(self, texts: Union[str, Sequence[str]], *, max_length: Optional[int] = None,
               padding: str = "max_length", warn_truncation: bool = True) -> TokenizedBatch:
    """Tokenizes to [B, max_length] (default model_max_length); padding "max_length" or "longest"."""
    if isinstance(texts, str):
      texts = [texts]
    if padding not in ("max_length", "longest"):
      raise ValueError(f"padding={padding!r}: use 'max_length' (SD pipelines) or 'longest'.")
    max_length = max_length or self.model_max_length
    if max_length < 2:
      raise ValueError(f"max_length={max_length} leaves no room for <|startoftext|> and <|endoftext|>.")
    rows = []
    for text in texts:
      if not isinstance(text, str):
        raise TypeError(f"the tokenizer takes strings, got {type(text).__name__}: {text!r}.")
      enc = self._tk.encode(text, add_special_tokens=False)
      ids = enc.ids
      if len(ids) > max_length - 2:
        if warn_truncation:
          dropped = text[enc.offsets[max_length - 2][0]:]
          warnings.warn(f"prompt truncated to {max_length} tokens (CLIP's limit); dropped: {dropped!r}",
                        stacklevel=2)
        ids = ids[:max_length - 2]
      rows.append([self.bos_token_id] + ids + [self.eos_token_id])
    width = max_length if padding == "max_length" else max(len(r) for r in rows)
    input_ids = np.full((len(rows), width), self.pad_token_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
      input_ids[i, :len(r)] = r
      mask[i, :len(r)] = 1
    return TokenizedBatch(input_ids, mask, mask.sum(axis=1).astype(np.int32))

  def word_token_positions(self, prompt: str) -> list[tuple[str, list[int]]]:
    """Each whitespace-separated word of `prompt` with the positions of its tokens in the tokenized sequence
    (position 0 is <|startoftext|>), e.g. for Attend-and-Excite's token indices. Words cut off by truncation
    get no positions past the limit."""
    enc = self._tk.encode(prompt, add_special_tokens=False)
    words, spans, start = [], [], None
    for i, ch in enumerate(prompt + " "):
      if ch.isspace():
        if start is not None:
          words.append(prompt[start:i])
          spans.append((start, i))
          start = None
      elif start is None:
        start = i
    out = [(w, []) for w in words]
    limit = self.model_max_length - 2
    for t, (s, _) in enumerate(enc.offsets[:limit]):
      for k, (ws, we) in enumerate(spans):
        if ws <= s < we:
          out[k][1].append(t + 1)
          break
    return out

  def token_indices(self, prompt: str, words: Sequence[str]) -> list[int]:
    """Position of each given word's token in `prompt` (first occurrence, case-insensitive, punctuation
    ignored); for a word split into several tokens, its last one that is not punctuation (under the causal mask
    it has seen the whole word)."""
    ids = [self.bos_token_id] + self.tokenize(prompt)
    table = self.word_token_positions(prompt)
    result = []
    for w in words:
      hits = [pos for word, pos in table if word.lower().strip(_PUNCT) == w.lower().strip(_PUNCT) and pos]
      if not hits:
        raise ValueError(f"word {w!r} is not in the prompt {prompt!r} (words: {[x for x, _ in table]}).")
      wordlike = [p for p in hits[0] if any(ch.isalnum() for ch in self.decode([ids[p]]))]
      result.append((wordlike or hits[0])[-1])
    return result


_PUNCT = ".,!?;:'\"()[]{}"


def has_tokenizer(folder: str) -> bool:
  """Whether `folder` holds a CLIP tokenizer of either layout that `CLIPTokenizer.from_folder` reads."""
  def exists(*names):
    return all(os.path.isfile(os.path.join(folder, n)) for n in names)
  return exists("vocab.json", "merges.txt") or exists("tokenizer.json")


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise CLIPTokenizerFormatError(f"{path} is not valid JSON ({e}).") from None


def _read_vocab_json(path: str) -> dict[str, int]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"tokenizer file {path!r} does not exist (a CLIP tokenizer folder holds "
                            "vocab.json and merges.txt, or tokenizer.json).")
  vocab = _read_json(path)
  if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
    raise CLIPTokenizerFormatError(f"{path} must hold a JSON object {{token: id}}.")
  return vocab


def _read_merges_txt(path: str) -> list[str]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"tokenizer file {path!r} does not exist (a CLIP tokenizer folder holds "
                            "vocab.json and merges.txt, or tokenizer.json).")
  with open(path, encoding="utf-8") as f:
    lines = [l.rstrip("\n") for l in f]
  return [l for l in lines if l and not l.startswith("#version")]


def read_tokenizer_json(path: str) -> tuple[dict[str, int], list]:
  """(vocab, merges) of a `tokenizers` tokenizer.json holding a CLIP BPE (end-of-word suffix "</w>"); its added
  tokens must be entries of the vocabulary (CLIP's specials, SD 2.x's "!"), not extra tokens."""
  raw = _read_json(path)
  model = raw.get("model") if isinstance(raw, dict) else None
  expected = 'a BPE model with end_of_word_suffix "</w>" (CLIP\'s byte-level BPE, as transformers writes it)'
  if not isinstance(model, dict) or model.get("type") != "BPE" or model.get("end_of_word_suffix") != "</w>":
    kind = model.get("type") if isinstance(model, dict) else None
    raise CLIPTokenizerFormatError(f"{path}: expected {expected}; found model type {kind!r}.")
  vocab, merges = model.get("vocab"), model.get("merges")
  if not isinstance(vocab, dict) or not isinstance(merges, list):
    raise CLIPTokenizerFormatError(f"{path}: expected {expected} with a vocab object and a merges list.")
  extra = [t["content"] for t in raw.get("added_tokens") or [] if vocab.get(t.get("content")) != t.get("id")]
  if extra:
    raise CLIPTokenizerFormatError(f"{path}: added tokens outside the BPE vocabulary are not supported "
                                   f"(e.g. textual-inversion tokens): {extra[:5]}.")
  return vocab, merges


def bytes_to_unicode() -> dict[int, str]:
  """CLIP's reversible table from bytes to printable characters (the byte-level BPE symbols, in vocab order)."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))
