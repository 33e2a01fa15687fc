"""StackGAN's CUB-fine-tuned Inception-v3 (--kind stackgan_inception) against TensorFlow itself.

The TF side is a compact re-expression of tensorflow/models inception/inception/slim/inception_model.py's
inception_v3 as StackGAN's inception_score.py builds it (TF-slim ops: conv + batch norm without gamma, eps 0.001,
SAME / VALID paddings, TF average pools, the aux head, 51 classes), written with tf.compat.v1 variable scopes so the
variables get the original names. A "training" graph with exponential-moving-average shadows and RMSProp slots (as
tensorflow/models' inception_train.py leaves them) is saved with TF's own Saver, the shadows holding other random
weights than the plain variables; the reference forward restores through ExponentialMovingAverage.
variables_to_restore() and softmaxes logits[:, 1:], as inception_score.py does, on images resized with PIL's bilinear
filter (scipy.misc.imresize) and mapped by x / 127.5 - 1. Our side: the CLI's conversion, then the Inception-score
extractor on the uint8 images. Tolerances: logits rel <= 1e-4 of their largest magnitude, softmax abs <= 1e-5, IS
rel <= 1e-4; the input path bit-exact against PIL.
"""
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="the TF checkpoint tests need TensorFlow (the 'parity' extra)")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from PIL import Image  # noqa: E402

from attngan_jax import convert_torch, stackgan_inception  # noqa: E402
from attngan_jax.inception import stackgan_preprocess  # noqa: E402
from t2i_common import parallel  # noqa: E402
from t2i_common.metrics import inception_score as isc  # noqa: E402
from t2i_common.metrics.features import InceptionExtractor  # noqa: E402
from t2i_common.weights import WeightMismatchError  # noqa: E402

tf1 = tf.compat.v1
NUM_CLASSES = 51  # inception_score.py: FLAGS.num_classes (50) + 1 background class
SIZE = 299


# ------------------------------------------------------------------- TF-slim Inception-v3, restated (names kept)

def _conv(x, n, kernel, stride=1, padding="SAME", scope=None):
  """slim ops.conv2d with batch_norm_params: `weights`, then BatchNorm beta / moving statistics (scale=False)."""
  kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
  with tf1.variable_scope(scope, default_name="Conv"):
    w = tf1.get_variable("weights", [kh, kw, int(x.shape[-1]), n], initializer=tf1.zeros_initializer())
    y = tf.nn.conv2d(x, w, [1, stride, stride, 1], padding)
    with tf1.variable_scope(None, default_name="BatchNorm"):
      beta = tf1.get_variable("beta", [n], initializer=tf1.zeros_initializer())
      moving = [tf1.GraphKeys.GLOBAL_VARIABLES, tf1.GraphKeys.MOVING_AVERAGE_VARIABLES]
      mean = tf1.get_variable("moving_mean", [n], initializer=tf1.zeros_initializer(), trainable=False,
                              collections=moving)
      var = tf1.get_variable("moving_variance", [n], initializer=tf1.ones_initializer(), trainable=False,
                             collections=moving)
    return tf.nn.relu(tf.nn.batch_normalization(y, mean, var, beta, None, 0.001))


def _fc(x, n, scope=None):
  with tf1.variable_scope(scope, default_name="FC"):
    w = tf1.get_variable("weights", [int(x.shape[-1]), n], initializer=tf1.zeros_initializer())
    b = tf1.get_variable("biases", [n], initializer=tf1.zeros_initializer())
    return tf.matmul(x, w) + b


def _avg(x):  # slim ops.avg_pool under the blocks' arg_scope: 3 x 3, stride 1, SAME (padding not counted)
  return tf.nn.avg_pool2d(x, 3, 1, "SAME")


def _max(x):
  return tf.nn.max_pool2d(x, 3, 2, "VALID")


def _mixed_35(net, scope, pool_features):
  with tf1.variable_scope(scope):
    with tf1.variable_scope("branch1x1"):
      b1 = _conv(net, 64, 1)
    with tf1.variable_scope("branch5x5"):
      b5 = _conv(_conv(net, 48, 1), 64, 5)
    with tf1.variable_scope("branch3x3dbl"):
      b3 = _conv(_conv(_conv(net, 64, 1), 96, 3), 96, 3)
    with tf1.variable_scope("branch_pool"):
      bp = _conv(_avg(net), pool_features, 1)
    return tf.concat([b1, b5, b3, bp], 3)


def _mixed_17(net, scope, c7):
  with tf1.variable_scope(scope):
    with tf1.variable_scope("branch1x1"):
      b1 = _conv(net, 192, 1)
    with tf1.variable_scope("branch7x7"):
      b7 = _conv(_conv(_conv(net, c7, 1), c7, [1, 7]), 192, [7, 1])
    with tf1.variable_scope("branch7x7dbl"):
      bd = _conv(net, c7, 1)
      for n, k in ((c7, [7, 1]), (c7, [1, 7]), (c7, [7, 1]), (192, [1, 7])):
        bd = _conv(bd, n, k)
    with tf1.variable_scope("branch_pool"):
      bp = _conv(_avg(net), 192, 1)
    return tf.concat([b1, b7, bd, bp], 3)


def _mixed_8(net, scope):
  with tf1.variable_scope(scope):
    with tf1.variable_scope("branch1x1"):
      b1 = _conv(net, 320, 1)
    with tf1.variable_scope("branch3x3"):
      b3 = _conv(net, 384, 1)
      b3 = tf.concat([_conv(b3, 384, [1, 3]), _conv(b3, 384, [3, 1])], 3)
    with tf1.variable_scope("branch3x3dbl"):
      bd = _conv(_conv(net, 448, 1), 384, 3)
      bd = tf.concat([_conv(bd, 384, [1, 3]), _conv(bd, 384, [3, 1])], 3)
    with tf1.variable_scope("branch_pool"):
      bp = _conv(_avg(net), 192, 1)
    return tf.concat([b1, b3, bd, bp], 3)


def slim_inception_v3(images, num_classes=NUM_CLASSES):
  """inception_model.inception_v3(is_training=False): (logits, aux_logits)."""
  net = _conv(images, 32, 3, stride=2, padding="VALID", scope="conv0")
  net = _conv(net, 32, 3, padding="VALID", scope="conv1")
  net = _max(_conv(net, 64, 3, padding="SAME", scope="conv2"))
  net = _conv(net, 80, 1, padding="VALID", scope="conv3")
  net = _max(_conv(net, 192, 3, padding="VALID", scope="conv4"))
  net = _mixed_35(net, "mixed_35x35x256a", 32)
  net = _mixed_35(net, "mixed_35x35x288a", 64)
  net = _mixed_35(net, "mixed_35x35x288b", 64)
  with tf1.variable_scope("mixed_17x17x768a"):
    with tf1.variable_scope("branch3x3"):
      b3 = _conv(net, 384, 3, stride=2, padding="VALID")
    with tf1.variable_scope("branch3x3dbl"):
      bd = _conv(_conv(_conv(net, 64, 1), 96, 3), 96, 3, stride=2, padding="VALID")
    with tf1.variable_scope("branch_pool"):
      bp = _max(net)
    net = tf.concat([b3, bd, bp], 3)
  for scope, c7 in (("mixed_17x17x768b", 128), ("mixed_17x17x768c", 160), ("mixed_17x17x768d", 160),
                    ("mixed_17x17x768e", 192)):
    net = _mixed_17(net, scope, c7)
  with tf1.variable_scope("aux_logits"):
    aux = _conv(tf.nn.avg_pool2d(net, 5, 3, "VALID"), 128, 1, scope="proj")
    aux = _conv(aux, 768, [int(aux.shape[1]), int(aux.shape[2])], padding="VALID")
    aux = _fc(tf.reshape(aux, [-1, 768]), num_classes)
  with tf1.variable_scope("mixed_17x17x1280a"):
    with tf1.variable_scope("branch3x3"):
      b3 = _conv(_conv(net, 192, 1), 320, 3, stride=2, padding="VALID")
    with tf1.variable_scope("branch7x7x3"):
      b7 = _conv(_conv(_conv(net, 192, 1), 192, [1, 7]), 192, [7, 1])
      b7 = _conv(b7, 192, 3, stride=2, padding="VALID")
    with tf1.variable_scope("branch_pool"):
      bp = _max(net)
    net = tf.concat([b3, b7, bp], 3)
  net = _mixed_8(_mixed_8(net, "mixed_8x8x2048a"), "mixed_8x8x2048b")
  with tf1.variable_scope("logits"):
    net = tf.nn.avg_pool2d(net, [int(net.shape[1]), int(net.shape[2])], 1, "VALID")  # dropout: identity at eval
    logits = _fc(tf.reshape(net, [-1, 2048]), num_classes, scope="logits")
  return logits, aux


def _random_value(name, shape, rng):
  """He-normal kernels (the signal keeps its scale through the ~95 layers), random BN shifts and statistics."""
  leaf = name.split("/")[-1]
  if leaf == "weights":
    return rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
  if leaf == "moving_variance":
    return 0.5 + rng.uniform(size=shape)
  return 0.1 * rng.normal(size=shape)  # beta, biases, moving_mean


def save_training_checkpoint(prefix, seed=0, write_version=None):
  """The variables tensorflow/models' inception_train.py saves (plain variables, EMA shadows of trainable and
  moving-average variables, RMSProp slots, global_step), with TF's Saver. Returns the shadows' values by plain
  name (the weights StackGAN's inception_score.py restores)."""
  rng = np.random.default_rng(seed)
  with tf.Graph().as_default():
    slim_inception_v3(tf1.placeholder(tf.float32, [None, SIZE, SIZE, 3]))
    step = tf1.train.get_or_create_global_step()
    averaged = tf1.trainable_variables() + tf1.moving_average_variables()
    ema = tf1.train.ExponentialMovingAverage(0.9999, step)
    ema.apply(averaged)
    opt = tf1.train.RMSPropOptimizer(0.1, decay=0.9, momentum=0.9, epsilon=1.0)
    opt.apply_gradients([(tf.zeros_like(v), v) for v in tf1.trainable_variables()], global_step=step)
    shadows, feed, assigns = {}, {}, []
    for v in averaged:
      shape = v.shape.as_list()
      shadows[v.op.name] = _random_value(v.op.name, shape, rng).astype(np.float32)
      # The plain variable gets what training left (not what is scored), its shadow the scored weights.
      for target, value in ((v, _random_value(v.op.name, shape, rng)), (ema.average(v), shadows[v.op.name])):
        placeholder = tf1.placeholder(tf.float32, shape)
        assigns.append(target.assign(placeholder))
        feed[placeholder] = value
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      sess.run(assigns, feed)  # one run: Variable.load per variable costs ~0.3 s each
      kwargs = {} if write_version is None else {"write_version": write_version}
      tf1.train.Saver(tf1.global_variables(), **kwargs).save(sess, prefix, write_meta_graph=False)
  return shadows


def reference_scores(prefix, inputs):
  """inception_score.py's graph on [B, 299, 299, 3] inputs in [-1, 1]: (logits, softmax of logits[:, 1:])."""
  with tf.Graph().as_default():
    x = tf1.placeholder(tf.float32, inputs.shape, name="inputs")
    logits, _ = slim_inception_v3(x)
    pred = tf.nn.softmax(logits[:, 1:])
    saver = tf1.train.Saver(tf1.train.ExponentialMovingAverage(0.9999).variables_to_restore())
    with tf1.Session() as sess:
      saver.restore(sess, prefix)
      return sess.run([logits, pred], {x: inputs})


def pil_preprocess(images):
  """inception_score.preprocess: scipy.misc.imresize(img, (299, 299, 3), interp='bilinear') (PIL's BILINEAR on the
  uint8 image), then img / 127.5 - 1."""
  resized = [np.asarray(Image.fromarray(im).resize((SIZE, SIZE), Image.BILINEAR)) for im in images]
  return np.stack(resized).astype(np.float32) / 127.5 - 1.0


def images(n, height, width, seed):
  rng = np.random.default_rng(seed)
  base = rng.uniform(0, 1, (n, 1, 1, 3)) + 0.2 * rng.normal(size=(n, height, width, 3))
  return np.clip(base * 255, 0, 255).round().astype(np.uint8)


def rel_err(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  root = tmp_path_factory.mktemp("stackgan_inception")
  prefix = str(root / "birds_valid299" / "model.ckpt-5000")
  (root / "birds_valid299").mkdir()
  shadows = save_training_checkpoint(prefix)
  return root, prefix, shadows


# ------------------------------------------------------------------------------------------------------ tests

def test_logits_and_inception_score_match_tensorflow(checkpoint):
  root, prefix, shadows = checkpoint
  out = str(root / "inception_cub")
  convert_torch.main(["--kind", "stackgan_inception", "--src", prefix, "--out", out])
  model, variables = convert_torch.load_stackgan_inception(out)
  assert model.variant == "slim" and model.num_classes == NUM_CLASSES
  assert "scale" not in variables["params"]["Mixed_7c"]["branch_pool"]["bn"]
  np.testing.assert_array_equal(variables["params"]["Mixed_6b"]["branch7x7dbl_4"]["conv"]["kernel"],
                                shadows["mixed_17x17x768b/branch7x7dbl/Conv_3/weights"])

  x = images(2, 256, 256, seed=0)  # AttnGAN's last stage is 256 px; both paths upsample to 299
  ref_logits, ref_pred = reference_scores(prefix, pil_preprocess(x))
  mesh = parallel.create_mesh(devices=jax.devices()[:1])
  extractor = InceptionExtractor.from_converted(out, "class_scores", batch_size=2, mesh=mesh)
  ours = extractor(x)
  e_logits = rel_err(ours, ref_logits[:, 1:])
  shifted = np.asarray(ours, np.float64) - np.max(ours, axis=1, keepdims=True)
  ours_pred = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
  e_pred = float(np.max(np.abs(ours_pred - ref_pred)))
  ours_is = isc.inception_score(ours, splits=1)["inception_score"]
  ref_is = float(np.exp(np.mean(np.sum(ref_pred * (np.log(ref_pred) - np.log(ref_pred.mean(0, keepdims=True))), 1))))
  e_is = abs(ours_is - ref_is) / ref_is
  print(f"StackGAN CUB Inception vs TF: logits rel {e_logits:.1e} (max |logit| {np.abs(ref_logits).max():.3g}), "
        f"softmax abs {e_pred:.1e}, IS {ours_is:.6f} vs {ref_is:.6f} (rel {e_is:.1e})")
  assert ours.shape == (2, NUM_CLASSES - 1) and extractor.output == "logits_foreground"
  assert extractor.preprocess == "stackgan" and extractor.backend.startswith("stackgan-cub-inception-v3")
  assert e_logits <= 1e-4 and e_pred <= 1e-5 and e_is <= 1e-4
  assert ref_pred.max() - ref_pred.min() > 1e-3  # the class scores depend on the weights (not all uniform)


def test_preprocess_matches_pil_bit_exactly():
  # Up, down (PIL widens the filter), as is, and non-square. Only shapes with height <= width: Pillow 13 does the
  # vertical pass first when an image shrinks more vertically (1 level off in ~24 % of pixels then), the Pillow of
  # StackGAN's scipy.misc days always horizontal first; square images, all generated ones, are the same either way.
  for h, w in ((64, 64), (256, 256), (400, 400), (299, 299), (256, 331)):
    x = images(2, h, w, seed=h)
    ours = np.asarray(stackgan_preprocess(jnp.asarray(x, jnp.float32) / 255.0))
    # Compared as 8-bit levels: x / 127.5 - 1 in float32 may differ in the last bit between numpy and XLA.
    np.testing.assert_array_equal(np.round((ours + 1.0) * 127.5), np.round((pil_preprocess(x) + 1.0) * 127.5),
                                  err_msg=f"{h}x{w}")


def test_npz_source_plain_variables_and_bad_files(checkpoint, tmp_path, monkeypatch):
  root, prefix, shadows = checkpoint
  state = stackgan_inception.read_checkpoint(prefix)
  assert not any(k.startswith(("aux_logits/", "global_step")) or "/RMSProp" in k for k in state)
  _, from_ckpt, config = convert_torch.convert_state_dict(state, "stackgan_inception", source=prefix)
  assert config == {"kind": "stackgan_inception", "num_classes": NUM_CLASSES, "variant": "slim",
                    "weights": "exponential moving averages"}

  # An .npz of {name: array} (exported elsewhere) gives the same variables.
  np.savez(tmp_path / "ckpt.npz", **state)
  convert_torch.convert_file("stackgan_inception", str(tmp_path / "ckpt.npz"), str(tmp_path / "from_npz"))
  _, from_npz = convert_torch.load_stackgan_inception(str(tmp_path / "from_npz"))
  jax.tree_util.tree_map(np.testing.assert_array_equal, from_npz, from_ckpt)

  # Without any shadows the plain variables are taken (and said so).
  plain = {k: v for k, v in state.items() if not k.endswith(stackgan_inception.EMA_SUFFIX)}
  _, _, config = convert_torch.convert_state_dict(plain, "stackgan_inception", keep_fc=False)
  assert config["weights"].startswith("plain variables") and config["num_classes"] is None

  # A missing tensor (both its names), named as the checkpoint names it.
  name = "mixed_17x17x768b/branch7x7/Conv_1/weights"
  broken = {k: v for k, v in state.items() if k.removesuffix(stackgan_inception.EMA_SUFFIX) != name}
  np.savez(tmp_path / "missing.npz", **broken)
  with pytest.raises(WeightMismatchError, match="missing from the file") as e:
    convert_torch.convert_file("stackgan_inception", str(tmp_path / "missing.npz"), str(tmp_path / "x"))
  assert e.value.missing == [name]
  # A shadow missing while others are there (the reference's EMA restore would fail too).
  partial = {k: v for k, v in state.items() if k != name + stackgan_inception.EMA_SUFFIX}
  with pytest.raises(WeightMismatchError) as e:
    convert_torch.convert_state_dict(partial, "stackgan_inception")
  assert e.value.missing == [name + stackgan_inception.EMA_SUFFIX]
  # A wrong shape.
  wrong = dict(state, **{"conv0/weights/ExponentialMovingAverage": np.zeros((3, 3, 3, 16), np.float32)})
  with pytest.raises(WeightMismatchError, match="wrong shape") as e:
    convert_torch.convert_state_dict(wrong, "stackgan_inception")
  assert e.value.misshaped[0].startswith("conv0/weights: (3, 3, 3, 16) -> (3, 3, 3, 32)")
  # Not this model at all: no classifier.
  with pytest.raises(ValueError, match="logits/logits/biases"):
    convert_torch.convert_state_dict({"conv0/weights": np.zeros((3, 3, 3, 32))}, "stackgan_inception")
  # A V1-format checkpoint (TF's format before 0.12) holding part of the model: read, and the rest listed missing.
  with tf.Graph().as_default():
    _conv(tf1.placeholder(tf.float32, [None, 8, 8, 3]), 32, 3, padding="VALID", scope="conv0")
    _fc(tf1.placeholder(tf.float32, [None, 2048]), NUM_CLASSES, scope="logits/logits")
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      (tmp_path / "v1").mkdir()
      tf1.train.Saver(write_version=tf1.train.SaverDef.V1).save(sess, str(tmp_path / "v1" / "model.ckpt-5000"),
                                                                  write_meta_graph=False)
  with pytest.raises(WeightMismatchError) as e:
    convert_torch.convert_file("stackgan_inception", str(tmp_path / "v1" / "model.ckpt-5000"), str(tmp_path / "x"))
  assert "conv1/weights" in e.value.missing and "conv0/weights" not in e.value.missing
  # Files that are not there, and TensorFlow missing.
  with pytest.raises(FileNotFoundError, match="no TensorFlow checkpoint"):
    stackgan_inception.read_checkpoint(str(tmp_path / "nothing" / "model.ckpt-5000"))
  monkeypatch.setitem(__import__("sys").modules, "tensorflow", None)
  with pytest.raises(ImportError, match="pip install tensorflow-cpu"):
    stackgan_inception.read_checkpoint(prefix)
