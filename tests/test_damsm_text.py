"""Caption tokenisation, vocabulary files and the DAMSM text encoder's masking."""
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attngan_jax.initializers import rbg_key
from attngan_jax.text import TextTransform, Vocabulary, fit_length, tokenize
from attngan_jax.damsm.text_encoder import TextEncoder, reverse_within_length
from t2i_common.weights import abstract_params


def test_tokenize_like_reference():
  assert tokenize("A small, RED bird\u2014with wings!") == ["a", "small", "red", "bird", "with", "wings"]
  # non-ASCII characters are dropped inside tokens; tokens that become empty disappear
  assert tokenize("caf\u00e9 \u00e9\u00e9 ok") == ["caf", "ok"]
  assert tokenize("this\ufffd\ufffdbird") == ["this", "bird"]
  assert tokenize("under_score 42") == ["under_score", "42"]
  with pytest.raises(TypeError):
    tokenize(None)


def test_vocabulary_build_json_roundtrip(tmp_path):
  vocab = Vocabulary.build(["a red bird", "a blue bird", ["tiny", "red"]])
  assert vocab.ixtoword == ["<end>", "a", "red", "bird", "blue", "tiny"]
  path = str(tmp_path / "vocab.json")
  vocab.save_json(path)
  assert Vocabulary.load_json(path) == vocab
  with pytest.raises(ValueError, match="must start with"):
    Vocabulary(["a", "<end>"])
  with pytest.raises(ValueError, match="duplicate"):
    Vocabulary(["<end>", "a", "a"])


def test_reference_captions_pickle(tmp_path):
  ixtoword = {0: "<end>", 1: "this", 2: "bird", 3: "is", 4: "red"}
  wordtoix = {w: i for i, w in ixtoword.items()}
  path = tmp_path / "captions.pickle"
  with open(path, "wb") as f:
    pickle.dump([[[1, 2, 3, 4]], [[2, 3]], ixtoword, wordtoix], f, protocol=2)
  vocab, train, test = Vocabulary.from_captions_pickle(str(path))
  assert vocab.ixtoword == ["<end>", "this", "bird", "is", "red"]
  assert train == [[1, 2, 3, 4]] and test == [[2, 3]]
  bad = tmp_path / "bad.pickle"
  with open(bad, "wb") as f:
    pickle.dump({"x": 1}, f, protocol=2)
  with pytest.raises(ValueError, match="should hold"):
    Vocabulary.from_captions_pickle(str(bad))


def test_fit_length_pads_and_keeps_ordered_subset():
  out, n = fit_length([5, 6, 7], 5, np.random.default_rng(0))
  assert n == 3 and out.tolist() == [5, 6, 7, 0, 0] and out.dtype == np.int32
  ids = list(range(1, 31))
  out, n = fit_length(ids, 18, np.random.default_rng(1))
  assert n == 18 and len(set(out.tolist())) == 18
  assert np.all(np.diff(out) > 0), "kept positions must stay in order"
  assert out.tolist() != ids[:18], "a random subset, not a truncation"
  assert fit_length(ids, 4, None)[0].tolist() == [1, 2, 3, 4]


def test_text_transform_unknown_and_empty():
  vocab = Vocabulary.build(["a red bird"])
  tf = TextTransform(vocab, words_num=4)
  out = tf("A red zebra bird", np.random.default_rng(0))
  assert out["tokens"].tolist() == [1, 2, 3, 0] and int(out["length"]) == 3
  assert tf.unknown_words == 1
  with pytest.raises(ValueError, match="no word in the vocabulary"):
    tf("!!! ...")
  batch = tf.batch(["a bird", "red"])
  assert batch["tokens"].shape == (2, 4) and batch["length"].tolist() == [2, 1]


def test_reverse_within_length_is_involution():
  x = jnp.arange(12).reshape(2, 6)
  lengths = jnp.array([4, 6])
  r = reverse_within_length(x, lengths)
  assert r.tolist() == [[3, 2, 1, 0, 4, 5], [11, 10, 9, 8, 7, 6]]
  assert (reverse_within_length(r, lengths) == x).all()


def test_text_encoder_ignores_padding_and_counts_params():
  tokens = jnp.array([[3, 4, 5, 0, 0], [7, 8, 9, 10, 11]])
  lengths = jnp.array([3, 5])
  shapes = abstract_params(TextEncoder(n_words=5450), tokens, lengths)
  assert sum(x.size for x in jax.tree_util.tree_leaves(shapes)) == 2_075_320  # REFERENCE.md, CUB vocabulary
  model = TextEncoder(n_words=50)
  params = jax.jit(model.init)(rbg_key(jax.random.key(0)), tokens, lengths)  # rbg + jit: fast to compile
  apply = jax.jit(model.apply, static_argnames="deterministic")
  words, sent = apply(params, tokens, lengths)
  assert words.shape == (2, 5, 256) and sent.shape == (2, 256)
  assert np.all(np.asarray(words[0, 3:]) == 0)
  # Changing padding ids must not change anything; the caption alone decides.
  words2, sent2 = apply(params, tokens.at[0, 3:].set(42), lengths)
  np.testing.assert_array_equal(words, words2)
  np.testing.assert_array_equal(sent, sent2)
  # The same caption alone (T = its length) gives the same result: backward starts at the last word.
  w1, s1 = apply(params, tokens[:1, :3], lengths[:1])
  np.testing.assert_allclose(w1[0], words[0, :3], atol=1e-6)
  np.testing.assert_allclose(s1[0], sent[0], atol=1e-6)
  # Sentence = [forward at last word, backward at first word].
  np.testing.assert_allclose(sent[:, :128], words[jnp.arange(2), lengths - 1, :128], atol=1e-6)
  np.testing.assert_allclose(sent[:, 128:], words[:, 0, 128:], atol=1e-6)
  # Dropout is active only when asked for.
  wd, _ = apply(params, tokens, lengths, deterministic=False, rngs={"dropout": rbg_key(jax.random.key(1))})
  assert not np.allclose(wd, words)
