"""The AttnGAN generator and discriminators without PyTorch: parameter counts, shapes, init, modes, bad input.

Parity with the reference's PyTorch code: tests/test_gan_parity.py.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attngan_jax.gan.attention import attention_mask
from attngan_jax.gan.blocks import BatchNorm
from attngan_jax.gan.config import gan_model_config
from attngan_jax.gan.discriminator import Discriminator, make_discriminators
from attngan_jax.gan.generator import make_generator
from t2i_common.parallel import CPU_FAST_COMPILE

jit = functools.partial(jax.jit, compiler_options=CPU_FAST_COMPILE)
B, T = 3, 6
# A CPU-sized config: images at 16, 32 and 64 px.
SMALL = dict(gf_dim=4, df_dim=4, r_num=1, base_size=16, z_dim=8, condition_dim=6, embedding_dim=10)


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def inputs(model, lengths=(6, 2, 1), seed=0):
  rng = np.random.default_rng(seed)
  z = jnp.asarray(rng.standard_normal((B, model.z_dim)), jnp.float32)
  sent = jnp.asarray(rng.standard_normal((B, model.embedding_dim)), jnp.float32)
  words = jnp.asarray(rng.standard_normal((B, T, model.embedding_dim)), jnp.float32)
  mask = jnp.arange(T)[None, :] >= jnp.asarray(lengths)[:, None]
  noise = jnp.asarray(rng.standard_normal((B, model.condition_dim)), jnp.float32)
  return z, sent, words, mask, noise


@pytest.fixture(scope="module")
def small():
  model = gan_model_config(**SMALL)
  gen = make_generator(model)
  z, sent, words, mask, noise = inputs(model)
  variables = jit(gen.init)(jax.random.PRNGKey(0), z, sent, words, mask, ca_noise=noise)
  return model, gen, variables


def test_parameter_counts_equal_the_reference_birds():
  model = gan_model_config("birds")
  gen = make_generator(model)
  z, sent, words, mask, noise = inputs(model)
  g = jax.eval_shape(lambda: gen.init(jax.random.PRNGKey(0), z, sent, words, mask, ca_noise=noise))
  assert count(g["params"]) == 7_084_592
  expected = {64: 6_313_730, 128: 19_424_002, 256: 71_858_946}
  for d in make_discriminators(model):
    s = d.image_size
    v = jax.eval_shape(lambda: d.init(jax.random.PRNGKey(0), jnp.zeros((2, s, s, 3)), jnp.zeros((2, 256))))
    assert count(v["params"]) == expected[s], s


def test_shapes_ranges_and_attention_maps(small):
  model, gen, variables = small
  z, sent, words, mask, noise = inputs(model)
  images, maps, mu, logvar = jit(gen.apply)(variables, z, sent, words, mask, ca_noise=noise)
  assert [im.shape for im in images] == [(B, 16, 16, 3), (B, 32, 32, 3), (B, 64, 64, 3)]
  assert [m.shape for m in maps] == [(B, T, 16, 16), (B, T, 32, 32)]
  assert mu.shape == logvar.shape == (B, model.condition_dim)
  for im in images:
    assert im.dtype == jnp.float32 and float(jnp.max(jnp.abs(im))) <= 1.0
  for m in maps:  # beta sums to 1 over the words and is 0 on each caption's own padding (correct mask)
    np.testing.assert_allclose(np.sum(m, axis=1), 1.0, rtol=1e-5)
    assert float(jnp.max(jnp.where(mask[:, :, None, None], m, 0.0))) == 0.0
  # The reference's own sizes: base 64 gives a 4-upBlock first stage of gf * 16 channels.
  ref = make_generator(gan_model_config(branch_num=1))
  shapes = jax.eval_shape(lambda: ref.init(jax.random.PRNGKey(0), *inputs(ref)[:4], ca_noise=inputs(ref)[4]))
  assert shapes["params"]["h_net1"]["fc"]["kernel"].shape == (200, 32 * 16 * 4 * 4 * 2)
  assert sorted(k for k in shapes["params"]["h_net1"] if k.startswith("upsample")) == [f"upsample{i}" for i in
                                                                                        range(1, 5)]


def test_reference_init(small):
  _, _, variables = small
  p, stats = variables["params"], variables["batch_stats"]
  k = np.asarray(p["h_net2"]["residual_0"]["conv1"]["kernel"])  # (3, 3, 8, 16): rows of the torch matrix
  w = k.reshape(-1, k.shape[-1]).T  # (out, fan_in) with out <= fan_in: orthonormal rows
  np.testing.assert_allclose(w @ w.T, np.eye(w.shape[0]), atol=1e-5)
  np.testing.assert_array_equal(p["ca_net"]["fc"]["bias"], 0.0)
  scales = np.concatenate([np.ravel(x) for path, x in jax.tree_util.tree_leaves_with_path(p)
                           if path[-1].key == "scale"])
  assert abs(scales.mean() - 1.0) < 0.01 and 0.01 < scales.std() < 0.03
  np.testing.assert_array_equal(stats["h_net1"]["fc_bn"]["mean"], 0.0)
  np.testing.assert_array_equal(stats["h_net1"]["fc_bn"]["var"], 1.0)


def test_ca_noise_from_the_rng_stream(small):
  model, gen, variables = small
  z, sent, words, mask, _ = inputs(model)
  run = jit(lambda v, key: gen.apply(v, z, sent, words, mask, rngs={"ca": key})[0][-1])
  a, b, a2 = run(variables, jax.random.PRNGKey(1)), run(variables, jax.random.PRNGKey(2)), run(variables,
                                                                                               jax.random.PRNGKey(1))
  np.testing.assert_array_equal(a, a2)
  assert float(jnp.max(jnp.abs(a - b))) > 1e-3
  with pytest.raises(Exception, match="ca"):
    gen.apply(variables, z, sent, words, mask)


def test_train_mode_updates_running_statistics_as_pytorch():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 3, 5)) * 2.0 + 1.0
  bn = BatchNorm()
  v = bn.init(jax.random.PRNGKey(1), x, train=False)
  y, updates = bn.apply(v, x, train=True, mutable=["batch_stats"])
  xs = np.asarray(x).reshape(-1, 5)
  scale, bias = np.asarray(v["params"]["scale"]), np.asarray(v["params"]["bias"])
  np.testing.assert_allclose(y, ((xs - xs.mean(0)) / np.sqrt(xs.var(0) + 1e-5) * scale + bias).reshape(x.shape),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * xs.mean(0), rtol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * xs.var(0, ddof=1), rtol=1e-5)
  with pytest.raises(ValueError, match="more than one value per channel"):
    bn.apply(v, x[:1, :1, :1], train=True, mutable=["batch_stats"])


def test_reference_mask_bug_tiling_and_effect(small):
  mask = np.arange(T)[None, :] >= np.array([6, 2, 1])[:, None]
  q = 4
  # The reference: scores flattened to rows b * Q + q, mask tiled with mask.repeat(Q, 1).
  tiled = np.tile(mask, (q, 1)).reshape(B, q, T)
  np.testing.assert_array_equal(attention_mask(jnp.asarray(mask), q, True), tiled)
  np.testing.assert_array_equal(attention_mask(jnp.asarray(mask), q, False), np.repeat(mask[:, None], q, 1))

  model, gen, variables = small
  buggy = make_generator(gan_model_config(**SMALL, reference_mask_bug=True))
  z, sent, words, mask, noise = inputs(model)
  run = jit(lambda g, v, m: g.apply(v, z, sent, words, m, ca_noise=noise), static_argnums=0)
  fixed_out, bug_out = run(gen, variables, mask), run(buggy, variables, mask)
  # short captions: the bug moves attention onto padding words and changes the images
  assert float(jnp.max(jnp.abs(fixed_out[0][-1] - bug_out[0][-1]))) > 1e-3
  padding_share = jnp.sum(jnp.where(mask[:, :, None, None], bug_out[1][0], 0.0), axis=1)
  assert float(jnp.max(padding_share)) > 0.1
  # without padding the two modes agree
  full = jnp.zeros_like(mask)
  np.testing.assert_array_equal(run(gen, variables, full)[0][-1], run(buggy, variables, full)[0][-1])


def test_discriminators_all_sizes(small):
  model, _, _ = small
  ds = make_discriminators(model)
  assert [d.image_size for d in ds] == [16, 32, 64]
  d = Discriminator(image_size=32, df_dim=4, embedding_dim=10)
  images = jax.random.uniform(jax.random.PRNGKey(0), (B, 32, 32, 3), minval=-1, maxval=1)
  sent = jax.random.normal(jax.random.PRNGKey(1), (B, 10))
  v = jit(d.init)(jax.random.PRNGKey(2), images, sent)
  features, uncond, cond = jit(d.apply)(v, images, sent)
  assert features.shape == (B, 4, 4, 32) and uncond.shape == cond.shape == (B,)
  # The methods the GAN losses call give the same as the full call; train mode updates the running statistics.
  feats = d.apply(v, images, method="encode")
  np.testing.assert_allclose(d.apply(v, feats, method="uncond_logits"), uncond, rtol=1e-6)
  np.testing.assert_allclose(d.apply(v, feats, sent, method="cond_logits"), cond, rtol=1e-6)
  _, updates = d.apply(v, images, sent, train=True, mutable=["batch_stats"])
  assert float(jnp.max(jnp.abs(updates["batch_stats"]["image_encoder"]["bn1"]["mean"]))) > 0
  shapes = jax.eval_shape(lambda: Discriminator(image_size=256, df_dim=2).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 256, 256, 3)), jnp.zeros((1, 256))))
  assert sorted(shapes["params"]) == ["cond_dnet", "down_0", "down_1", "image_encoder", "squeeze_0", "squeeze_1",
                                      "uncond_dnet"]


def test_bad_input_is_named(small):
  model, gen, variables = small
  z, sent, words, mask, noise = inputs(model)
  with pytest.raises(ValueError, match=r"reference layout \[B, D, T\]"):
    gen.apply(variables, z, sent, jnp.swapaxes(words, 1, 2), mask, ca_noise=noise)
  with pytest.raises(ValueError, match="mask must be bool"):
    gen.apply(variables, z, sent, words, mask.astype(jnp.int32), ca_noise=noise)
  with pytest.raises(ValueError, match="z must be"):
    gen.apply(variables, z[:, :3], sent, words, mask, ca_noise=noise)
  with pytest.raises(ValueError, match="base_size must be 4"):
    make_generator(gan_model_config(base_size=48))
  with pytest.raises(ValueError, match="unknown model option"):
    gan_model_config(gf=3)
  with pytest.raises(ValueError, match=r"images \[B, 32, 32, 3\]"):
    Discriminator(image_size=32).init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 32, 32)), jnp.zeros((1, 256)))
  with pytest.raises(ValueError, match="side 4 \\* 2\\^n"):
    Discriminator(image_size=48).init(jax.random.PRNGKey(0), jnp.zeros((1, 48, 48, 3)), jnp.zeros((1, 256)))


def test_train_mode_batch_statistics_are_global_under_a_sharded_batch(small):
  """BatchNorm over a batch split across 8 devices uses the whole batch's statistics (as on one device)."""
  from t2i_common.parallel import batch_sharding, create_mesh, replicated
  model, gen, variables = small
  n = 8
  rng = np.random.default_rng(1)
  z = rng.standard_normal((n, model.z_dim)).astype(np.float32)
  sent = rng.standard_normal((n, model.embedding_dim)).astype(np.float32)
  words = rng.standard_normal((n, T, model.embedding_dim)).astype(np.float32)
  mask = np.arange(T)[None, :] >= rng.integers(1, T + 1, n)[:, None]
  noise = rng.standard_normal((n, model.condition_dim)).astype(np.float32)
  def step(v, *args):
    return gen.apply(v, *args[:4], ca_noise=args[4], train=True, mutable=["batch_stats"])

  one = jit(step)(variables, z, sent, words, mask, noise)
  mesh = create_mesh()
  assert mesh.devices.size == 8
  rep, batch = replicated(mesh), batch_sharding(mesh)
  sharded = jit(step, in_shardings=(rep, batch, batch, batch, batch, batch))(variables, z, sent, words, mask, noise)
  for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(sharded)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # reduction order only
