"""Our CLIP tokenizer against transformers' CLIPTokenizer (tiny learned vocab; the real 49,408-token vocab when
the open_clip_torch wheel, which ships it, is installed), on folders of both layouts (vocab.json + merges.txt as on
the Hub; tokenizer.json as transformers' save_pretrained writes), padding of SD 1.x/2.x, truncation, word
positions, bad folders."""
import importlib.util
import json
import os
import shutil
import warnings

import numpy as np
import pytest

from diffusion_fixtures import tiny_clip_bpe, write_tiny_tokenizer, write_tokenizer_folder
from diffusion_jax.tokenizer import BOS, EOS, CLIPTokenizer, CLIPTokenizerFormatError

STRINGS = [
    "a photo of a cat", "A Cat and a FROG", "a red circle next to a blue square.", "", "   ", "zebra",
    "a zebra-striped giraffe, eating!!! 3.14159 apples?", "it's the dog's bowl; they'll've", "hello!world",
    "naïve café Ünïcödé", "日本語のテキスト", "emoji 😀👍🏽 and symbols ©®™", "tabs\tand\nnewlines  and   spaces",
    "<|startoftext|>inner<|endoftext|> specials", "UPPER lower MiXeD 123abc abc123", "don't STOP'S #hashtag @user",
    "a" * 40, " ".join(["cat"] * 90), "1,000,000 dollars -- (or 2.5e-3%)", "  leading and trailing   ",
    "Привет мир", "x" * 300,
]
LAYOUTS = ["saved", "vocab"]


@pytest.fixture(scope="module", params=[(lay, pad) for lay in LAYOUTS for pad in ("<|endoftext|>", "!")],
                ids=[f"{lay}-{pad}" for lay in LAYOUTS for pad in ("sd1pad", "sd2pad")])
def tiny_dir(request, tmp_path_factory):
  pytest.importorskip("transformers", reason="the folder is written with transformers' CLIPTokenizer")
  layout, pad = request.param
  folder = write_tiny_tokenizer(str(tmp_path_factory.mktemp("tok")), pad_token=pad, layout=layout)
  assert os.path.isfile(os.path.join(folder, "tokenizer.json" if layout == "saved" else "vocab.json"))
  return folder


def _compare_with_transformers(folder: str, strings):
  from transformers import CLIPTokenizer as Reference
  ref = Reference.from_pretrained(folder)
  ours = CLIPTokenizer.from_folder(folder)
  assert ours.pad_token_id == ref.pad_token_id and ours.eos_token_id == ref.eos_token_id
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    got = ours(strings)
  want = ref(strings, padding="max_length", max_length=77, truncation=True)
  for i, s in enumerate(strings):
    assert got.input_ids[i].tolist() == want["input_ids"][i], s
    assert got.attention_mask[i].tolist() == want["attention_mask"][i], s
  return ours, got


def test_ids_match_transformers_on_tiny_vocab(tiny_dir):
  ours, got = _compare_with_transformers(tiny_dir, STRINGS)
  assert got.input_ids.shape == (len(STRINGS), 77) and got.input_ids.dtype == np.int32
  assert got.lengths[0] == 2 + len(ours.tokenize("a photo of a cat"))
  assert got.lengths[STRINGS.index("zebra")] > 3  # not in the word list: several sub-word tokens


def test_padding_follows_the_folder(tiny_dir):
  tok = CLIPTokenizer.from_folder(tiny_dir)
  batch = tok("a cat")
  n = int(batch.lengths[0])
  assert batch.input_ids[0, 0] == tok.vocab[BOS] and batch.input_ids[0, n - 1] == tok.vocab[EOS]
  pad_id = tok.vocab[EOS] if tok.pad_token == EOS else 0
  assert (batch.input_ids[0, n:] == pad_id).all() and batch.attention_mask[0].sum() == n
  assert tok("a cat", padding="longest").input_ids.shape == (1, n)


def test_truncation_warns_with_the_dropped_words(tiny_dir):
  tok = CLIPTokenizer.from_folder(tiny_dir)
  prompt = " ".join(["cat"] * 75 + ["purple", "hexagon"])
  with pytest.warns(UserWarning, match="dropped: 'purple hexagon'"):
    batch = tok(prompt)
  assert batch.lengths[0] == 77 and batch.input_ids[0, -1] == tok.eos_token_id
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    tok(prompt, warn_truncation=False)


def test_word_positions_and_token_indices(tiny_dir):
  tok = CLIPTokenizer.from_folder(tiny_dir)
  assert tok.token_indices("a cat and a frog", ["cat", "frog"]) == [2, 5]  # Attend-and-Excite's example
  table = tok.word_token_positions("A zebra, and a frog")
  assert [w for w, _ in table] == ["A", "zebra,", "and", "a", "frog"]
  zebra = table[1][1]
  assert zebra == list(range(2, 2 + len(zebra))) and len(zebra) > 2
  ids = tok("A zebra, and a frog").input_ids[0]
  assert tok.decode(ids[zebra]).replace(" ", "") == "zebra,"
  assert tok.token_indices("A zebra, and a frog", ["zebra", "frog"]) == [zebra[-2], zebra[-1] + 3]  # not ","
  with pytest.raises(ValueError, match="not in the prompt"):
    tok.token_indices("a cat", ["dog"])


def test_save_and_reload(tiny_dir, tmp_path):
  tok = CLIPTokenizer.from_folder(tiny_dir)
  tok.save(str(tmp_path))
  again = CLIPTokenizer.from_folder(str(tmp_path))
  assert again.pad_token == tok.pad_token and again.vocab == tok.vocab
  np.testing.assert_array_equal(again(STRINGS[:8]).input_ids, tok(STRINGS[:8]).input_ids)
  assert tok.decode(tok("a photo of a cat").input_ids[0]) == "a photo of a cat"


def test_sd2_style_special_tokens_map_overrides_config(tmp_path):
  """SD 2.x folders: tokenizer_config.json says pad <|endoftext|>, special_tokens_map.json says "!" (wins)."""
  vocab, merges = tiny_clip_bpe()
  (tmp_path / "vocab.json").write_text(json.dumps(vocab))
  (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "pad_token": EOS, "do_lower_case": True,
       "bos_token": {"__type": "AddedToken", "content": BOS}, "eos_token": {"__type": "AddedToken", "content": EOS},
       "unk_token": {"__type": "AddedToken", "content": EOS}}))
  (tmp_path / "special_tokens_map.json").write_text(json.dumps({"bos_token": BOS, "eos_token": EOS,
                                                                "pad_token": "!", "unk_token": EOS}))
  assert CLIPTokenizer.from_folder(str(tmp_path)).pad_token_id == 0
  pytest.importorskip("transformers", reason="comparison with transformers' CLIPTokenizer")
  _compare_with_transformers(str(tmp_path), STRINGS[:6])


def test_bad_folder_errors(tmp_path):
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
  with pytest.raises(CLIPTokenizerFormatError, match=r"is not a CLIP tokenizer folder: expected vocab.json \+ "
                     r"merges.txt .* or tokenizer.json .*found \['tokenizer_config.json'\]"):
    CLIPTokenizer.from_folder(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    CLIPTokenizer.from_folder(str(tmp_path / "absent"))
  vocab, merges = tiny_clip_bpe()
  (tmp_path / "vocab.json").write_text(json.dumps(vocab))
  with pytest.raises(CLIPTokenizerFormatError, match="not a CLIP tokenizer folder"):  # merges.txt missing
    CLIPTokenizer.from_folder(str(tmp_path))
  (tmp_path / "merges.txt").write_text("\n".join(merges))
  with pytest.raises(ValueError, match="pad_token"):
    CLIPTokenizer.from_folder(str(tmp_path), pad_token="<pad>")
  with pytest.raises(TypeError, match="strings"):
    CLIPTokenizer.from_folder(str(tmp_path))([None])


def test_bad_tokenizer_json(tmp_path):
  wordpiece = {"model": {"type": "WordPiece", "vocab": {"a": 0}}, "added_tokens": []}
  (tmp_path / "tokenizer.json").write_text(json.dumps(wordpiece))
  with pytest.raises(CLIPTokenizerFormatError, match=r"tokenizer.json: expected a BPE model with "
                     r"end_of_word_suffix \"</w>\".*found model type 'WordPiece'"):
    CLIPTokenizer.from_folder(str(tmp_path))
  (tmp_path / "tokenizer.json").write_text('{"model": ')
  with pytest.raises(CLIPTokenizerFormatError, match="tokenizer.json is not valid JSON"):
    CLIPTokenizer.from_folder(str(tmp_path))
  vocab, merges = tiny_clip_bpe()
  bpe = {"type": "BPE", "vocab": vocab, "merges": merges, "end_of_word_suffix": "</w>"}
  extra = [{"id": len(vocab), "content": "<my-style>", "special": False}]
  (tmp_path / "tokenizer.json").write_text(json.dumps({"model": bpe, "added_tokens": extra}))
  with pytest.raises(CLIPTokenizerFormatError, match="added tokens outside the BPE vocabulary.*<my-style>"):
    CLIPTokenizer.from_folder(str(tmp_path))


@pytest.fixture(scope="module")
def real_vocab():
  """CLIP's 49,408-token (vocab, merges), from the BPE file that open_clip_torch ships."""
  spec = importlib.util.find_spec("open_clip")  # locates the wheel without importing it (it needs ftfy, torch)
  if spec is None or spec.origin is None:
    pytest.skip("open_clip_torch is not installed (pip install --no-deps open_clip_torch gives the real vocab)")
  path = os.path.join(os.path.dirname(spec.origin), "bpe_simple_vocab_16e6.txt.gz")
  if not os.path.isfile(path):
    pytest.skip(f"{path} is missing")
  tok = CLIPTokenizer.from_bpe_file(path)  # OpenAI CLIP's construction; checked against transformers below
  return tok.vocab, [" ".join(m) for m in tok.merges]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("pad", [EOS, "!"], ids=["sd1pad", "sd2pad"])
def test_real_clip_vocab(real_vocab, layout, pad, tmp_path):
  pytest.importorskip("transformers", reason="comparison with transformers' CLIPTokenizer")
  folder = write_tokenizer_folder(str(tmp_path), *real_vocab, pad_token=pad, layout=layout)
  tok = CLIPTokenizer.from_folder(folder)
  assert tok.vocab_size == 49408 and len(tok.merges) == 48894
  assert tok("a photo of a cat").input_ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
  assert tok("a photo of a cat").input_ids[0, 7:].max() == (0 if pad == "!" else 49407)  # SD 2.x pads with id 0
  _compare_with_transformers(folder, STRINGS)


def test_tokenizer_json_with_merges_as_strings(tmp_path):
  """tokenizers < 0.20 (transformers 4's CLIPTokenizerFast) stored merges as "a b" strings, later ones as pairs."""
  pytest.importorskip("transformers", reason="the folder is written with transformers' CLIPTokenizer")
  folder = write_tiny_tokenizer(str(tmp_path / "pairs"), pad_token="!", layout="saved")
  raw = json.loads(open(os.path.join(folder, "tokenizer.json"), encoding="utf-8").read())
  assert all(isinstance(m, list) for m in raw["model"]["merges"])
  raw["model"]["merges"] = [" ".join(m) for m in raw["model"]["merges"]]
  os.makedirs(tmp_path / "strings")
  shutil.copy(os.path.join(folder, "tokenizer_config.json"), tmp_path / "strings")
  (tmp_path / "strings" / "tokenizer.json").write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
  a, b = CLIPTokenizer.from_folder(folder), CLIPTokenizer.from_folder(str(tmp_path / "strings"))
  np.testing.assert_array_equal(a(STRINGS[:10]).input_ids, b(STRINGS[:10]).input_ids)
