"""DAMSM losses: masking, options, finite gradients, and global-batch negatives under data parallelism."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from attngan_jax.damsm import loss as dl
from attngan_jax.damsm.loss import damsm_loss, damsm_loss_config
from t2i_common.parallel import create_mesh

# Jitted once per option set: eager dispatch of every small op would dominate the test time.
GAMMAS = ("gamma1", "gamma2", "gamma3", "paper_word_score")
words_loss = jax.jit(dl.words_loss, static_argnames=GAMMAS)
sent_loss = jax.jit(dl.sent_loss, static_argnames=("gamma3",))


def make_features(b, t=6, d=8, n=9, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, t + 1, b).astype(np.int32)
  words = rng.normal(size=(b, t, d)).astype(np.float32)
  words[np.arange(t)[None] >= lengths[:, None]] = 0  # the text encoder gives zeros past the length
  return dict(regions=rng.normal(size=(b, 3, n // 3, d)).astype(np.float32),
              image_global=rng.normal(size=(b, d)).astype(np.float32),
              words=words, sentence=rng.normal(size=(b, d)).astype(np.float32), lengths=lengths,
              class_ids=rng.integers(0, max(b // 2, 1), b).astype(np.int32))


def total_loss(f, example_mask=None):
  """L_DAMSM with the default (reference) options; traceable, so callers jit it."""
  return damsm_loss(f["regions"], f["image_global"], f["words"], f["sentence"], f["lengths"], f["class_ids"],
                    damsm_loss_config(), example_mask=example_mask)


total_loss_jit = jax.jit(total_loss)


def reference_word_score(regions, words, n_words, g1, g2):
  """One (image, caption) pair, straight from Eq. 7-10 in numpy (reference variant: no 1/gamma2)."""
  v, e = regions.reshape(-1, regions.shape[-1]), words[:n_words]
  s = v @ e.T
  s = np.exp(s - s.max(1, keepdims=True))
  s /= s.sum(1, keepdims=True)
  a = np.exp(g1 * s.T - (g1 * s.T).max(1, keepdims=True))
  a /= a.sum(1, keepdims=True)
  c = a @ v
  cos = np.sum(c * e, 1) / (np.linalg.norm(c, axis=1) * np.linalg.norm(e, axis=1))
  return np.log(np.sum(np.exp(g2 * cos)))


def test_word_loss_matches_pairwise_formula_and_ignores_padding():
  f = make_features(5)
  cfg = damsm_loss_config()
  w0, w1, attn = words_loss(f["regions"], f["words"], f["lengths"], None, gamma1=cfg.gamma1, gamma2=cfg.gamma2,
                            gamma3=cfg.gamma3)
  scores = np.array([[reference_word_score(f["regions"][i], f["words"][j], f["lengths"][j], cfg.gamma1, cfg.gamma2)
                      for j in range(5)] for i in range(5)]) * cfg.gamma3
  logp_rows = scores - np.log(np.exp(scores).sum(1, keepdims=True))
  logp_cols = scores - np.log(np.exp(scores).sum(0, keepdims=True))
  np.testing.assert_allclose(w0, -np.mean(np.diag(logp_rows)), rtol=1e-5)
  np.testing.assert_allclose(w1, -np.mean(np.diag(logp_cols)), rtol=1e-5)
  assert attn.shape == (5, 6, 9)
  # Garbage in padded word slots changes nothing.
  words = f["words"].copy()
  words[np.arange(6)[None] >= f["lengths"][:, None]] = 7.0
  v0, v1, _ = words_loss(f["regions"], words, f["lengths"], None, gamma1=cfg.gamma1, gamma2=cfg.gamma2,
                         gamma3=cfg.gamma3)
  np.testing.assert_allclose([v0, v1], [w0, w1], rtol=1e-6)
  # Paper variant: the word score is divided by gamma2 (log of the sum to the power 1/gamma2).
  p0, _, _ = words_loss(f["regions"], f["words"], f["lengths"], None, gamma1=cfg.gamma1, gamma2=cfg.gamma2,
                        gamma3=cfg.gamma3, paper_word_score=True)
  scores_p = scores / cfg.gamma2
  np.testing.assert_allclose(p0, -np.mean(np.diag(scores_p - np.log(np.exp(scores_p).sum(1, keepdims=True)))),
                             rtol=1e-5)


def test_same_class_masking_and_example_mask():
  f = make_features(6, seed=1)
  # All of one class: every negative is masked, so each softmax has only the matching pair left.
  s0, s1 = sent_loss(f["image_global"], f["sentence"], np.zeros(6, np.int32), gamma3=10.0)
  assert float(s0) == 0.0 and float(s1) == 0.0
  # Padding examples (example_mask False) neither count as negatives nor enter the mean.
  real = {k: v[:4] for k, v in f.items()}
  loss_real, _ = total_loss_jit(real)
  loss_padded, _ = total_loss_jit(f, np.array([1, 1, 1, 1, 0, 0], bool))
  np.testing.assert_allclose(loss_padded, loss_real, rtol=1e-5)


def test_gradients_are_finite_with_padding_and_masks():
  f = make_features(6, seed=2)
  f["class_ids"] = np.array([0, 0, 1, 1, 2, 2], np.int32)
  keys = ("regions", "image_global", "words", "sentence")

  def loss(*x):
    return total_loss(dict(f, **dict(zip(keys, x))))[0]

  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(*(f[k] for k in keys))
  for g in grads:
    assert np.all(np.isfinite(g))
  # Padded word slots get no gradient.
  pad = np.arange(6)[None] >= f["lengths"][:, None]
  assert np.all(np.asarray(grads[2])[pad] == 0)


def test_global_batch_negatives_under_data_parallelism():
  """48 examples split over 8 devices give the loss and gradients of one device (negatives span all 48)."""
  assert jax.device_count() == 8
  f = make_features(48, t=5, d=16, n=16, seed=3)
  keys = ("regions", "image_global", "words", "sentence")

  def loss_and_grads(regions, image_global, words, sentence, lengths, class_ids):
    def loss(*x):
      feats = dict(zip(keys, x), lengths=lengths, class_ids=class_ids)
      return total_loss(feats)[0]
    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(regions, image_global, words, sentence)

  args = [f[k] for k in keys + ("lengths", "class_ids")]
  one_device = jax.jit(loss_and_grads)(*[jax.device_put(a, jax.devices()[0]) for a in args])
  mesh = create_mesh({"data": -1, "fsdp": 1})
  sharding = NamedSharding(mesh, P(("data", "fsdp")))
  sharded_args = [jax.device_put(a, sharding) for a in args]
  assert len(sharded_args[0].sharding.device_set) == 8
  sharded = jax.jit(loss_and_grads)(*sharded_args)
  np.testing.assert_allclose(sharded[0], one_device[0], rtol=1e-5)
  for g_sharded, g_one in zip(sharded[1], one_device[1]):
    np.testing.assert_allclose(g_sharded, g_one, rtol=1e-4, atol=1e-6)
  # Negatives really span the global batch: the loss differs from the mean of per-shard losses.
  per_shard = np.mean([float(total_loss_jit({k: v[i * 6:(i + 1) * 6] for k, v in f.items()})[0])
                       for i in range(8)])
  assert abs(per_shard - float(sharded[0])) > 1e-2


def test_mismatched_batches_fail_clearly():
  f = make_features(4)
  with pytest.raises(ValueError, match="4 images but 3 captions"):
    words_loss(f["regions"], f["words"][:3], f["lengths"][:3], gamma1=4.0, gamma2=5.0, gamma3=10.0)
