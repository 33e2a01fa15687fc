"""StackGAN's CUB-fine-tuned Inception-v3 (the birds Inception score): reading its TensorFlow checkpoint and the map
from its TF-slim variable names onto InceptionV3(variant="slim").

The file: hanzhanggit/StackGAN-inception-model, inception_finetuned_models/birds_valid299/model.ckpt-5000. What
its scoring script (inception_score.py of that repository) and the library it builds on (tensorflow/models
inception/inception/slim/{inception_model,ops}.py) do, which the conversion and attngan_jax.inception follow:
- the graph: slim.inception.inception_v3 via inception_score.inference(images, num_classes) with batch-norm
  decay 0.9997, epsilon 0.001, conv stddev 0.1, dropout keep 0.8 (identity at eval);
- num_classes = FLAGS.num_classes + 1 = 51: label 0 is TF-slim's (unused) background class. The script takes
  tf.slice(logits, [0, 1], ...) (the 50 bird classes, column 0 dropped) and softmaxes those: the IS class scores
  are logits[:, 1:] (t2i_common.metrics.features "logits_foreground");
- preprocessing: scipy.misc.imresize(img, (299, 299, 3), interp='bilinear') of the uint8 image (PIL's bilinear
  resize, 8-bit), then img / 127.5 - 1 (attngan_jax.inception.stackgan_preprocess); batch 64, 10 splits; the
  script shuffles the images and scores floor(N / 64) full batches (the last partial batch is dropped);
- weights: restored with tf.train.ExponentialMovingAverage(0.9999).variables_to_restore(), i.e. the
  `<name>/ExponentialMovingAverage` shadow of every trainable variable and of every batch-norm moving mean and
  variance (slim puts those in the MOVING_AVERAGE_VARIABLES collection; tensorflow/models' inception_train.py
  averages trainable_variables() + moving_average_variables(), the "double average" of the BN statistics). This
  reader takes the shadow where the file has it and the plain variable otherwise (a file without any shadows);
- names (ops.py): conv2d makes `<scope>/weights` [kh, kw, in, out] (Flax's layout) and, with batch_norm_params,
  no bias but `<scope>/BatchNorm/{beta,moving_mean,moving_variance}`: batch_norm's default scale=False, so no
  gamma. Unnamed convs get TF's uniquified default scope Conv, Conv_1, ... in creation order within a branch
  scope; the stem is conv0..conv4; the classifier is logits/logits/{weights [2048, 51], biases};
- padding: the stem as torchvision (VALID except conv2 SAME, VALID 3 x 3 / 2 max pools); inside the blocks every
  stride-1 conv is SAME (torchvision's symmetric padding for odd kernels), the stride-2 convs and max pools VALID,
  and every branch pool, mixed_8x8x2048b's (torchvision's Mixed_7c) included, is avg_pool(3 x 3, stride 1, SAME),
  which excludes the padding from the mean; the head averages the 8 x 8 map (avg_pool VALID over its whole size);
- the aux head (aux_logits/{proj,Conv,FC}) is restored by the script but unused for the score: not imported.
Not model tensors, skipped: global_step and optimizer slots (RMSProp, RMSProp_1, Momentum, Adam, ...).

Sources: a TF checkpoint (V1 single file or V2 prefix / .index, read with tf.train.load_checkpoint; TensorFlow is
only needed here: pip install tensorflow-cpu, in the project's 'parity' extra), or an .npz of {variable name: array}
exported elsewhere (e.g. `np.savez(out, **{n: r.get_tensor(n) for n in r.get_variable_to_shape_map()})`).
"""
from __future__ import annotations

import os
import re

import numpy as np

from t2i_common.weights import WeightMismatchError, convert_strict

EMA_SUFFIX = "/ExponentialMovingAverage"
# Checkpoint entries deliberately not imported (regular expressions on the variable names).
IGNORE = (r"^aux_logits/", r"^global_step$",
          r"/(RMSProp|RMSProp_\d+|Momentum|Adam|Adam_\d+|Adagrad|Ftrl|Ftrl_\d+)$", r"^beta[12]_power$")
NUM_CLASSES_TENSOR = "logits/logits/biases"

STEM = {"Conv2d_1a_3x3": "conv0", "Conv2d_2a_3x3": "conv1", "Conv2d_2b_3x3": "conv2", "Conv2d_3b_1x1": "conv3",
        "Conv2d_4a_3x3": "conv4"}
# torchvision block name -> slim variable scope (inception_model.py keeps the old names, e.g. mixed_17x17x1280a
# for the 17 -> 8 reduction, "to not void previous checkpoints").
BLOCK_SCOPES = {"Mixed_5b": "mixed_35x35x256a", "Mixed_5c": "mixed_35x35x288a", "Mixed_5d": "mixed_35x35x288b",
                "Mixed_6a": "mixed_17x17x768a", "Mixed_6b": "mixed_17x17x768b", "Mixed_6c": "mixed_17x17x768c",
                "Mixed_6d": "mixed_17x17x768d", "Mixed_6e": "mixed_17x17x768e", "Mixed_7a": "mixed_17x17x1280a",
                "Mixed_7b": "mixed_8x8x2048a", "Mixed_7c": "mixed_8x8x2048b"}


def _branch(scope: str, *convs: str) -> dict[str, str]:
  """torchvision conv names of one slim branch scope, in creation order -> scope/Conv, scope/Conv_1, ..."""
  return {name: f"{scope}/Conv" + (f"_{i}" if i else "") for i, name in enumerate(convs)}


_A = {**_branch("branch1x1", "branch1x1"), **_branch("branch5x5", "branch5x5_1", "branch5x5_2"),
      **_branch("branch3x3dbl", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
      **_branch("branch_pool", "branch_pool")}
_B = {**_branch("branch3x3", "branch3x3"),
      **_branch("branch3x3dbl", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3")}
_C = {**_branch("branch1x1", "branch1x1"), **_branch("branch7x7", "branch7x7_1", "branch7x7_2", "branch7x7_3"),
      **_branch("branch7x7dbl", *(f"branch7x7dbl_{i}" for i in range(1, 6))),
      **_branch("branch_pool", "branch_pool")}
_D = {**_branch("branch3x3", "branch3x3_1", "branch3x3_2"),
      **_branch("branch7x7x3", *(f"branch7x7x3_{i}" for i in range(1, 5)))}
# The 1 x 3 conv of each split branch is created before the 3 x 1 one (tf.concat of [conv(1 x 3), conv(3 x 1)]).
_E = {**_branch("branch1x1", "branch1x1"), **_branch("branch3x3", "branch3x3_1", "branch3x3_2a", "branch3x3_2b"),
      **_branch("branch3x3dbl", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3a", "branch3x3dbl_3b"),
      **_branch("branch_pool", "branch_pool")}
BLOCK_CONVS = {"Mixed_5b": _A, "Mixed_5c": _A, "Mixed_5d": _A, "Mixed_6a": _B, "Mixed_6b": _C, "Mixed_6c": _C,
               "Mixed_6d": _C, "Mixed_6e": _C, "Mixed_7a": _D, "Mixed_7b": _E, "Mixed_7c": _E}
# slim conv leaf -> (Flax collection, path below the BasicConv2d module).
CONV_LEAVES = {"weights": ("params", ("conv", "kernel")), "BatchNorm/beta": ("params", ("bn", "bias")),
               "BatchNorm/moving_mean": ("batch_stats", ("bn", "mean")),
               "BatchNorm/moving_variance": ("batch_stats", ("bn", "var"))}


def _name_table() -> dict[str, tuple[str, ...]]:
  """Every slim variable of the model (aux head excepted) -> its Flax path in InceptionV3(variant="slim")."""
  convs = {(module,): scope for module, scope in STEM.items()}
  for block, scope in BLOCK_SCOPES.items():
    convs.update({(block, module): f"{scope}/{slim}" for module, slim in BLOCK_CONVS[block].items()})
  table = {}
  for modules, scope in convs.items():
    for leaf, (collection, tail) in CONV_LEAVES.items():
      table[f"{scope}/{leaf}"] = (collection,) + modules + tail
  table["logits/logits/weights"] = ("params", "fc", "kernel")
  table[NUM_CLASSES_TENSOR] = ("params", "fc", "bias")
  return table


NAME_TABLE = _name_table()


def rename(name: str, w: np.ndarray):
  """A t2i_common.weights rename rule: slim variable name -> (Flax path, array); None if not a model variable."""
  path = NAME_TABLE.get(name)
  return None if path is None else (path, w)


def _ignored(name: str) -> bool:
  return any(re.search(p, name) for p in IGNORE)


def read_checkpoint(path: str) -> dict[str, np.ndarray]:
  """{variable name: array} of a TF checkpoint (V1 file, V2 prefix or its .index, or a directory with a
  `checkpoint` file) or of an .npz; entries of IGNORE (aux head, optimizer slots, global_step) are not read."""
  if path.endswith(".npz"):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path!r} does not exist.")
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files if not _ignored(k.removesuffix(EMA_SUFFIX))}
  if path.endswith(".index"):
    path = path[:-len(".index")]
  if not (os.path.exists(path) or os.path.exists(path + ".index")):
    raise FileNotFoundError(f"no TensorFlow checkpoint at {path!r}: pass the checkpoint prefix as TF writes it "
                            "(e.g. inception_finetuned_models/birds_valid299/model.ckpt-5000), its .index file, or "
                            "an .npz of {variable name: array}.")
  try:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
  except ImportError as e:
    raise ImportError("reading a TensorFlow checkpoint needs TensorFlow: pip install tensorflow-cpu (in the "
                      "project's 'parity' extra), or export the checkpoint's variables elsewhere to an .npz "
                      "{variable name: array} and pass that file instead.") from e
  try:
    reader = tf.train.load_checkpoint(path)
  except Exception as e:  # TF raises its own error types (DataLossError, NotFoundError, ...) for unreadable files
    raise ValueError(f"{path!r} is not a readable TensorFlow checkpoint: {type(e).__name__}: {e}") from e
  names = [n for n in reader.get_variable_to_shape_map() if not _ignored(n.removesuffix(EMA_SUFFIX))]
  return {n: np.asarray(reader.get_tensor(n)) for n in sorted(names)}


def select_averages(state: dict[str, np.ndarray], source: str) -> tuple[dict[str, np.ndarray], bool]:
  """The weights inception_score.py restores: each model variable's `/ExponentialMovingAverage` shadow when the
  file holds shadows, else the plain variables. Returns ({plain name: array}, whether shadows were used).

  A file with shadows for some model variables but not for others is refused (the reference's
  variables_to_restore() restore would fail on it too)."""
  shadows = {n.removesuffix(EMA_SUFFIX): w for n, w in state.items() if n.endswith(EMA_SUFFIX)}
  plain = {n: w for n, w in state.items() if not n.endswith(EMA_SUFFIX)}
  if not shadows:
    return plain, False
  without = sorted(n for n in NAME_TABLE if n in plain and n not in shadows)
  if without:
    raise WeightMismatchError(source, [n + EMA_SUFFIX for n in without], [], [])
  unexpected = sorted(n + EMA_SUFFIX for n in shadows if n not in NAME_TABLE)
  if unexpected:
    raise WeightMismatchError(source, [], unexpected, [])
  # Plain variables that have a shadow are superseded; any other plain name goes on to the strict conversion.
  return {**{n: w for n, w in plain.items() if n not in shadows}, **shadows}, True


def num_classes(state: dict[str, np.ndarray], source: str) -> int:
  """The classifier's width (51 for the birds file: 50 classes + TF-slim's background class 0)."""
  bias = state.get(NUM_CLASSES_TENSOR)
  if bias is None or bias.ndim != 1:
    raise ValueError(f"{source} has no {NUM_CLASSES_TENSOR} vector: not a TF-slim Inception-v3 classifier "
                     "(inception/inception/slim/inception_model.py); StackGAN's file is "
                     "inception_finetuned_models/birds_valid299/model.ckpt-5000.")
  if bias.shape[0] < 3:
    raise ValueError(f"{source}: {NUM_CLASSES_TENSOR} has {bias.shape[0]} classes; the Inception score needs the "
                     "background class 0 plus at least 2 classes.")
  return int(bias.shape[0])


def convert(state: dict[str, np.ndarray], template, source: str, ignore=()) -> dict:
  """t2i_common.weights.convert_strict with this table; missing tensors are named as the checkpoint names them."""
  try:
    return convert_strict(state, template, rename, source=source, ignore=ignore)
  except WeightMismatchError as e:
    by_path = {"/".join(path): name for name, path in NAME_TABLE.items()}
    raise WeightMismatchError(source, sorted(by_path.get(m, m) for m in e.missing), e.unexpected,
                              e.misshaped) from None
