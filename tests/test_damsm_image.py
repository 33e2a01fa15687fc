"""DAMSM image encoder structure and the frozen-backbone optimizer."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from attngan_jax.damsm.optim import lr_schedule, make_optimizer, optimizer_config, stop_backbone_gradients
from attngan_jax.damsm.image_encoder import ImageEncoder, image_encoder_config, make_image_encoder
from attngan_jax.initializers import rbg_key
from attngan_jax.inception import InceptionV3
from t2i_common.weights import abstract_params


# 'rbg' keys and jit: threefry initialisation compiles very slowly on CPU, op by op even more so.
KEY = rbg_key(jax.random.key(0))


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def test_inception_structure_matches_torchvision():
  variables = abstract_params(InceptionV3(num_classes=1000), jnp.zeros((1, 299, 299, 3)))
  assert count(variables["params"]) == 23_834_568  # torchvision inception_v3 without the aux head
  assert variables["params"]["Mixed_6e"]["branch7x7dbl_5"]["conv"]["kernel"].shape == (1, 7, 192, 192)
  assert variables["batch_stats"]["Conv2d_1a_3x3"]["bn"]["var"].shape == (32,)
  out = jax.eval_shape(lambda x: InceptionV3().apply(jax.tree.map(jnp.zeros_like, variables), x),
                       jnp.zeros((2, 299, 299, 3)))
  assert out["mixed_6e"].shape == (2, 17, 17, 768) and out["mixed_7c"].shape == (2, 8, 8, 2048)
  with pytest.raises(ValueError, match="at least 75"):
    jax.eval_shape(lambda x: InceptionV3().apply(variables, x), jnp.zeros((1, 64, 64, 3)))


def test_image_encoder_shapes_and_errors():
  enc = ImageEncoder()
  shapes = jax.eval_shape(lambda x: enc.init_with_output(jax.random.PRNGKey(0), x)[0], jnp.zeros((2, 64, 64, 3)))
  assert shapes[0].shape == (2, 17, 17, 256) and shapes[1].shape == (2, 256)
  small = make_image_encoder(image_encoder_config("small_cnn"))
  (regions, glob), variables = jax.jit(small.init_with_output)(KEY, jnp.zeros((2, 64, 64, 3)))
  assert regions.shape == (2, 8, 8, 256) and glob.shape == (2, 256) and "batch_stats" not in variables
  with pytest.raises(ValueError, match="NHWC"):
    jax.eval_shape(small.init, KEY, jnp.zeros((2, 3, 64, 64)))
  bad = image_encoder_config()
  bad.backbone = "resnet"
  with pytest.raises(ValueError, match="backbone"):
    make_image_encoder(bad)


def _params():
  rng = np.random.default_rng(0)
  leaf = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)  # noqa: E731
  return {"text_encoder": {"encoder": {"embedding": leaf(5, 3)}},
          "image_encoder": {"small_cnn": {"conv0": {"kernel": leaf(3, 3, 3, 4)}},
                            "emb_cnn_code": {"kernel": leaf(4, 2), "bias": leaf(2)}}}


def test_optimizer_freezes_backbone_and_clips_text_only():
  cfg = optimizer_config(0.002)
  params = _params()
  tx = make_optimizer(cfg, params, backbone="small_cnn", train_backbone=False, steps_per_epoch=10)
  grads = jax.tree.map(lambda p: 100.0 * jnp.ones_like(p), params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  assert all(np.all(u == 0) for u in jax.tree_util.tree_leaves(updates["image_encoder"]["small_cnn"]))
  # Adam's first step moves every trainable leaf by ~lr whatever the gradient scale (clipped or not).
  for u in jax.tree_util.tree_leaves((updates["text_encoder"], updates["image_encoder"]["emb_cnn_code"])):
    np.testing.assert_allclose(np.abs(u), 0.002, rtol=1e-3)
  # Clipping: the text encoder sees gradients scaled to norm 0.25, the image heads unclipped gradients.
  clip_only = optax.multi_transform({"t": optax.clip_by_global_norm(cfg.text_grad_clip), "i": optax.identity()},
                                    {"text_encoder": "t", "image_encoder": "i"})
  clipped, _ = jax.jit(clip_only.update)(grads, clip_only.init(params))
  assert abs(float(optax.global_norm(clipped["text_encoder"])) - 0.25) < 1e-5
  trainable = make_optimizer(cfg, params, backbone="small_cnn", train_backbone=True, steps_per_epoch=10)
  updates, _ = jax.jit(trainable.update)(grads, trainable.init(params), params)
  assert np.all(np.asarray(updates["image_encoder"]["small_cnn"]["conv0"]["kernel"]) != 0)


def test_lr_schedule_reference_decay():
  sched = lr_schedule(optimizer_config(0.002), steps_per_epoch=10)
  np.testing.assert_allclose(sched(9), 0.002, rtol=1e-6)
  np.testing.assert_allclose(sched(10), 0.002 * 0.98, rtol=1e-6)
  # Decays while above lr/10: the last multiplication takes it to 0.98^114 ~ 0.0998 of the start.
  np.testing.assert_allclose(sched(10 * 500), 0.002 * 0.98 ** 114, rtol=1e-5)
  with pytest.raises(ValueError):
    lr_schedule(optimizer_config(), 0)


def test_stop_backbone_gradients_keeps_input_gradients():
  model = ImageEncoder(backbone="small_cnn", small_cnn_width=4, embed_dim=8)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16, 16, 3)), jnp.float32)
  params = {"text_encoder": {}, "image_encoder": jax.jit(model.init)(KEY, x)["params"]}

  def loss(params, x):
    p = stop_backbone_gradients(params, "small_cnn", train_backbone=False)
    regions, glob = model.apply({"params": p["image_encoder"]}, x)
    return jnp.sum(regions ** 2) + jnp.sum(glob ** 2)

  g_params, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
  assert all(np.all(g == 0) for g in jax.tree_util.tree_leaves(g_params["image_encoder"]["small_cnn"]))
  assert np.any(np.asarray(g_params["image_encoder"]["emb_features"]["kernel"]) != 0)
  assert np.any(np.asarray(g_x) != 0)  # e.g. the DAMSM loss reaching generated images
