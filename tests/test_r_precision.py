"""R-precision protocol on constructed vectors, mismatch sampling, and the DAMSMScorer on toy encoders."""
import jax.numpy as jnp
import numpy as np
import pytest

from attngan_jax.r_precision import DAMSMScorer, r_precision, sample_mismatches, summary, to_model_range
from attngan_jax.text import TextTransform, Vocabulary


def _classes(n, num_classes, seed=0):
  return np.random.default_rng(seed).integers(0, num_classes, n)


def test_perfect_encoders_score_100_percent():
  rng = np.random.default_rng(0)
  class_ids = _classes(1000, 50)
  prototypes = rng.normal(size=(50, 16))
  # Image and caption vectors equal their class prototype (scaled: cosine ignores the norm): every
  # mismatching caption is of another class, so the ground truth always wins.
  image_vecs = prototypes[class_ids] * 3.0
  sent_vecs = prototypes[class_ids] + 0.01 * rng.normal(size=(1000, 16))
  result = r_precision(image_vecs, sent_vecs, class_ids, num_mismatch=99, num_folds=10, seed=1)
  assert result["r_precision"] == 1.0 and result["r_precision_std"] == 0.0
  assert len(result["folds"]) == 10 and result["num_images"] == 1000
  assert "100.00 +- 0.00 %" in summary(result)


def test_random_encoders_score_about_one_percent():
  rng = np.random.default_rng(0)
  n = 4000
  result = r_precision(rng.normal(size=(n, 32)), rng.normal(size=(n, 32)), _classes(n, 200), seed=3)
  # Chance is 1 / 100; 4,000 trials give a standard error of 0.16 %.
  assert 0.004 < result["r_precision"] < 0.018, result["r_precision"]
  assert result["r_precision_std"] > 0


def test_degenerate_encoder_scores_zero_not_one():
  # Ties count as misses: an encoder mapping everything to one vector must not look perfect.
  vecs = np.ones((200, 8))
  assert r_precision(vecs, vecs, None, num_mismatch=20, num_folds=4)["r_precision"] == 0.0


def test_half_right_encoder():
  rng = np.random.default_rng(1)
  n = 2000
  image_vecs = rng.normal(size=(n, 32))
  sent_vecs = rng.normal(size=(n, 32))
  good = rng.random(n) < 0.5
  sent_vecs[good] = image_vecs[good]
  result = r_precision(image_vecs, sent_vecs, None, num_mismatch=99, seed=0)
  expected = good.mean() + (1 - good.mean()) / 100
  assert abs(result["r_precision"] - expected) < 0.02
  assert np.array_equal(result["hits"][good], np.ones(good.sum(), bool))


def test_mismatch_sampling_excludes_same_class_and_is_seeded():
  class_ids = _classes(500, 8)
  m = sample_mismatches(class_ids, 99, np.random.default_rng(0))
  assert m.shape == (500, 99)
  assert np.all(class_ids[m] != class_ids[:, None])
  assert all(len(set(row)) == 99 for row in m)                       # distinct captions per image
  again = sample_mismatches(class_ids, 99, np.random.default_rng(0))
  assert np.array_equal(m, again)
  other = sample_mismatches(class_ids, 99, np.random.default_rng(1))
  assert not np.array_equal(m, other)
  # Every other-class item can be drawn (the skip over the class block is not off by one).
  counts = np.bincount(m.ravel(), minlength=500)
  assert np.all(counts > 0)


def test_results_deterministic_from_seed():
  rng = np.random.default_rng(2)
  a, b, c = rng.normal(size=(600, 8)), rng.normal(size=(600, 8)), _classes(600, 30)
  r1 = r_precision(a, b, c, seed=5)
  r2 = r_precision(a, b, c, seed=5)
  assert r1["folds"] == r2["folds"]


def test_bad_inputs_fail_clearly():
  rng = np.random.default_rng(0)
  v = rng.normal(size=(50, 4))
  with pytest.raises(ValueError, match="mismatching captions per image"):
    r_precision(v, v, np.zeros(50, int) + (np.arange(50) == 0), num_mismatch=10)
  with pytest.raises(ValueError, match="matched"):
    r_precision(v, v[:40], None, num_mismatch=10)
  with pytest.raises(ValueError, match="NaN"):
    r_precision(np.full((50, 4), np.nan), v, None, num_mismatch=10)
  with pytest.raises(ValueError, match="num_folds"):
    r_precision(v, v, None, num_mismatch=10, num_folds=51)
  with pytest.raises(ValueError, match=r"\[-1, 1\]"):
    to_model_range(np.full((1, 4, 4, 3), 3.0, np.float32))


COLORS = {"red": (1.0, -1.0, -1.0), "green": (-1.0, 1.0, -1.0), "blue": (-1.0, -1.0, 1.0),
          "white": (1.0, 1.0, 1.0), "black": (-1.0, -1.0, -1.0), "yellow": (1.0, 1.0, -1.0),
          "cyan": (-1.0, 1.0, 1.0), "magenta": (1.0, -1.0, 1.0)}


def _toy_scorer(batch_size=16, image_size=None):
  """Image vector = mean colour; sentence vector = the colour named by the caption's last word."""
  vocab = Vocabulary(["<end>", "a", "square"] + list(COLORS))
  table = np.zeros((len(vocab), 3), np.float32)
  for name, rgb in COLORS.items():
    table[vocab.wordtoix[name]] = rgb
  variables = {"image": {}, "text": {"table": jnp.asarray(table)}}
  return DAMSMScorer(lambda v, x: jnp.mean(x, axis=(1, 2)),
                     lambda v, t, n: v["table"][jnp.take_along_axis(t, n[:, None] - 1, axis=1)[:, 0]],
                     variables, TextTransform(vocab, 4), batch_size=batch_size, image_size=image_size)


def test_scorer_on_toy_encoders_arrays_and_iterators():
  scorer = _toy_scorer(batch_size=16, image_size=8)   # 8 fake devices: the batch is sharded
  names = list(COLORS)
  order = np.random.default_rng(0).integers(0, len(names), 37)   # not a multiple of the batch: padding
  captions = [f"a square {names[i]}" for i in order]
  images = np.stack([np.broadcast_to((np.array(COLORS[names[i]]) + 1) * 127.5, (12, 12, 3)) for i in order])
  images = images.astype(np.uint8)
  vecs = scorer.encode_images(images)                 # uint8, 12 px -> resized to 8
  assert vecs.shape == (37, 3)
  np.testing.assert_allclose(vecs, np.array([COLORS[names[i]] for i in order]), atol=1e-5)
  chunks = iter([images[:5], images[5:30], images[30:]])
  np.testing.assert_allclose(scorer.encode_images(chunks), vecs, atol=1e-6)
  result = scorer.score(images, captions, order, num_mismatch=4, num_folds=2)
  assert result["r_precision"] == 1.0
  # Captions that ignore the image (all the same) can never rank first.
  same = ["a square red"] * len(order)
  assert scorer.score(images, same, order, num_mismatch=4, num_folds=2)["r_precision"] == 0.0
