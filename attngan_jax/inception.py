"""Inception-v3 in Flax with torchvision's module structure and names.

Every torchvision tensor `<Block>.<branch>.conv.weight` / `.bn.{weight,bias,running_mean,running_var}` has
the Flax counterpart `<Block>/<branch>/conv/kernel` / `bn/{scale,bias}` (params) and `bn/{mean,var}`
(batch_stats), so weight conversion is a mechanical rename (attngan_jax.convert_torch). NHWC layout.

BatchNorm: eps 0.001 as torchvision. train=True normalises with batch statistics and updates the running
averages with PyTorch's momentum 0.1 (Flax momentum 0.9); Flax averages the biased batch variance where
PyTorch uses the unbiased one, a relative difference of 1/(elements per channel) in the running variance.

Three block variants (`InceptionV3.variant`):
- "torchvision": torchvision's blocks (the DAMSM backbone, ImageNet classifiers);
- "fid": the TF 2015-12-05 graph that FID is defined with, as pytorch-fid ports it (FIDInceptionA/C/E_1/E_2):
  the branch-pool average of Mixed_5b-5d, 6b-6e and 7b leaves the zero padding out of the mean (TF's
  avg_pool), and Mixed_7c's branch pool is a 3 x 3 max pool (stride 1, padding 1) instead of an average.
  Same tensor names and shapes as torchvision's, 1008 classes in its fc;
- "slim": the old TF-slim Inception-v3 (tensorflow/models inception/inception/slim, StackGAN's CUB-fine-tuned
  classifier; attngan_jax.stackgan_inception): every branch pool, Mixed_7c's too, a TF average pool (padding left
  out of the mean), and BatchNorm without a scale (slim's batch_norm(scale=False): bn has bias, mean and var only).
  Paddings, strides and the stem are torchvision's; the aux head is not built.
`fid_preprocess` is pytorch-fid's input path (bilinear resize to 299 without antialiasing, [0, 1] -> [-1, 1]);
`stackgan_preprocess` is StackGAN's inception_score.py input path (scipy.misc.imresize, i.e. PIL's 8-bit bilinear
resize to 299, reproduced bit-exactly in integer arithmetic, then x / 127.5 - 1).
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

Pair = tuple[int, int]


def _pair(v) -> Pair:
  return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nn.Module):
  """Conv (no bias) -> BatchNorm(eps 0.001) -> ReLU, torchvision's BasicConv2d.

  bn_scale=False: BatchNorm without its scale (gamma), as TF-slim's batch_norm(scale=False) of the "slim" variant.
  """
  features: int
  kernel: int | Pair
  stride: int = 1
  padding: int | Pair = 0
  bn_scale: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    ph, pw = _pair(self.padding)
    x = nn.Conv(self.features, _pair(self.kernel), strides=_pair(self.stride), padding=((ph, ph), (pw, pw)),
                use_bias=False, kernel_init=nn.initializers.truncated_normal(0.1), name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-3, use_fast_variance=False,
                     use_scale=self.bn_scale, name="bn")(x)
    return nn.relu(x)


VARIANTS = ("torchvision", "fid", "slim")
# The 3 x 3 stride-1 pool in front of a block's branch_pool conv:
#   "avg": torchvision's F.avg_pool2d(3, 1, 1), zero padding counted in the mean;
#   "avg_tf": TF's average pool (pytorch-fid: count_include_pad=False), padding left out of the mean;
#   "max": max pool with padding 1 (pytorch-fid's FIDInceptionE_2, the FID graph's Mixed_7c).
POOLS = ("avg", "avg_tf", "max")


def _branch_pool(x, pool: str):
  if pool == "max":
    return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
  if pool not in ("avg", "avg_tf"):
    raise ValueError(f"unknown branch pool {pool!r}; choose one of {POOLS}.")
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=pool == "avg")


def _max_pool3s2(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
  pool_features: int
  pool: str = "avg"
  bn_scale: bool = True

  @nn.compact
  def __call__(self, x, train):
    conv = functools.partial(BasicConv2d, bn_scale=self.bn_scale)
    b1 = conv(64, 1, name="branch1x1")(x, train)
    b5 = conv(48, 1, name="branch5x5_1")(x, train)
    b5 = conv(64, 5, padding=2, name="branch5x5_2")(b5, train)
    b3 = conv(64, 1, name="branch3x3dbl_1")(x, train)
    b3 = conv(96, 3, padding=1, name="branch3x3dbl_2")(b3, train)
    b3 = conv(96, 3, padding=1, name="branch3x3dbl_3")(b3, train)
    bp = conv(self.pool_features, 1, name="branch_pool")(_branch_pool(x, self.pool), train)
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  bn_scale: bool = True

  @nn.compact
  def __call__(self, x, train):
    conv = functools.partial(BasicConv2d, bn_scale=self.bn_scale)
    b3 = conv(384, 3, stride=2, name="branch3x3")(x, train)
    bd = conv(64, 1, name="branch3x3dbl_1")(x, train)
    bd = conv(96, 3, padding=1, name="branch3x3dbl_2")(bd, train)
    bd = conv(96, 3, stride=2, name="branch3x3dbl_3")(bd, train)
    return jnp.concatenate([b3, bd, _max_pool3s2(x)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int
  pool: str = "avg"
  bn_scale: bool = True

  @nn.compact
  def __call__(self, x, train):
    conv = functools.partial(BasicConv2d, bn_scale=self.bn_scale)
    c7 = self.channels_7x7
    b1 = conv(192, 1, name="branch1x1")(x, train)
    b7 = conv(c7, 1, name="branch7x7_1")(x, train)
    b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7, train)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7, train)
    bd = conv(c7, 1, name="branch7x7dbl_1")(x, train)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd, train)
    bd = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd, train)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd, train)
    bd = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd, train)
    bp = conv(192, 1, name="branch_pool")(_branch_pool(x, self.pool), train)
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  bn_scale: bool = True

  @nn.compact
  def __call__(self, x, train):
    conv = functools.partial(BasicConv2d, bn_scale=self.bn_scale)
    b3 = conv(192, 1, name="branch3x3_1")(x, train)
    b3 = conv(320, 3, stride=2, name="branch3x3_2")(b3, train)
    b7 = conv(192, 1, name="branch7x7x3_1")(x, train)
    b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7, train)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7, train)
    b7 = conv(192, 3, stride=2, name="branch7x7x3_4")(b7, train)
    return jnp.concatenate([b3, b7, _max_pool3s2(x)], axis=-1)


class InceptionE(nn.Module):
  pool: str = "avg"
  bn_scale: bool = True

  @nn.compact
  def __call__(self, x, train):
    conv = functools.partial(BasicConv2d, bn_scale=self.bn_scale)
    b1 = conv(320, 1, name="branch1x1")(x, train)
    b3 = conv(384, 1, name="branch3x3_1")(x, train)
    b3 = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3, train),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3, train)], axis=-1)
    bd = conv(448, 1, name="branch3x3dbl_1")(x, train)
    bd = conv(384, 3, padding=1, name="branch3x3dbl_2")(bd, train)
    bd = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd, train),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd, train)], axis=-1)
    bp = conv(192, 1, name="branch_pool")(_branch_pool(x, self.pool), train)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


# torchvision's block order after the stem; the DAMSM taps Mixed_6e (regions) and Mixed_7c (global).
BLOCKS: Sequence[tuple[str, type, dict]] = (
    ("Mixed_5b", InceptionA, {"pool_features": 32}),
    ("Mixed_5c", InceptionA, {"pool_features": 64}),
    ("Mixed_5d", InceptionA, {"pool_features": 64}),
    ("Mixed_6a", InceptionB, {}),
    ("Mixed_6b", InceptionC, {"channels_7x7": 128}),
    ("Mixed_6c", InceptionC, {"channels_7x7": 160}),
    ("Mixed_6d", InceptionC, {"channels_7x7": 160}),
    ("Mixed_6e", InceptionC, {"channels_7x7": 192}),
    ("Mixed_7a", InceptionD, {}),
    ("Mixed_7b", InceptionE, {}),
    ("Mixed_7c", InceptionE, {}),
)
# What the "fid" variant changes (pytorch-fid's FIDInception* blocks); Mixed_6a / 7a have no branch pool conv.
FID_POOLS = {"Mixed_5b": "avg_tf", "Mixed_5c": "avg_tf", "Mixed_5d": "avg_tf", "Mixed_6b": "avg_tf",
             "Mixed_6c": "avg_tf", "Mixed_6d": "avg_tf", "Mixed_6e": "avg_tf", "Mixed_7b": "avg_tf",
             "Mixed_7c": "max"}
# The "slim" variant (the old TF-slim graph, tensorflow/models inception/inception/slim/inception_model.py): every
# branch pool, Mixed_7c's included, is TF's avg_pool(3 x 3, stride 1, SAME), which leaves the padding out of the mean.
SLIM_POOLS = {name: "avg_tf" for name in FID_POOLS}
VARIANT_POOLS = {"torchvision": {}, "fid": FID_POOLS, "slim": SLIM_POOLS}


class InceptionV3(nn.Module):
  """Inception-v3 without the auxiliary head. Input NHWC, at least 75 x 75.

  Returns a dict: "mixed_6e" [B, h, w, 768] (17 x 17 at 299 px), "mixed_7c" [B, h', w', 2048],
  "pool" [B, 2048] (global average; pytorch-fid's pool3 features), and when num_classes is set "logits"
  [B, num_classes] and "logits_unbiased" (pool @ fc kernel without the bias: what the original Inception score
  code and torch-fidelity's isc take from the 1008-class FID graph).
  transform_input: torchvision's option that maps inputs normalised with mean = std = 0.5 (i.e. [-1, 1])
  to ImageNet normalisation; off by default because the DAMSM feeds [-1, 1] images to the blocks directly.
  variant: "torchvision", "fid" or "slim" (module docstring).
  """
  num_classes: Optional[int] = None
  transform_input: bool = False
  dropout: float = 0.5
  variant: str = "torchvision"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"InceptionV3 expects NHWC images [B, H, W, 3], got shape {x.shape}.")
    if self.variant not in VARIANTS:
      raise ValueError(f"unknown Inception variant {self.variant!r}; choose one of {VARIANTS}.")
    if min(x.shape[1:3]) < 75:
      raise ValueError(f"InceptionV3 needs images of at least 75 x 75 pixels, got {x.shape[1:3]}.")
    if self.transform_input:
      mean = jnp.array([0.485, 0.456, 0.406])
      std = jnp.array([0.229, 0.224, 0.225])
      x = (x * (std / 0.5)) + (mean - 0.5) / 0.5
    bn_scale = self.variant != "slim"
    conv = functools.partial(BasicConv2d, bn_scale=bn_scale)
    x = conv(32, 3, stride=2, name="Conv2d_1a_3x3")(x, train)
    x = conv(32, 3, name="Conv2d_2a_3x3")(x, train)
    x = conv(64, 3, padding=1, name="Conv2d_2b_3x3")(x, train)
    x = _max_pool3s2(x)
    x = conv(80, 1, name="Conv2d_3b_1x1")(x, train)
    x = conv(192, 3, name="Conv2d_4a_3x3")(x, train)
    x = _max_pool3s2(x)
    out = {}
    pools = VARIANT_POOLS[self.variant]
    for name, block, kwargs in BLOCKS:
      if name in pools:
        kwargs = dict(kwargs, pool=pools[name])
      x = block(name=name, bn_scale=bn_scale, **kwargs)(x, train)
      if name in ("Mixed_6e", "Mixed_7c"):
        out[name.lower()] = x
    out["pool"] = jnp.mean(x, axis=(1, 2))
    if self.num_classes:
      h = nn.Dropout(self.dropout)(out["pool"], deterministic=not train)
      fc = nn.Dense(self.num_classes, name="fc")
      out["logits"] = fc(h)
      out["logits_unbiased"] = h @ fc.variables["params"]["kernel"]
    return out


def resize_bilinear(images: jax.Array, size: int) -> jax.Array:
  """NHWC bilinear resize to size x size as PyTorch's F.interpolate(mode="bilinear", align_corners=False)
  without antialiasing (pytorch-fid's resize): half-pixel centres, edge samples clamped, no low-pass filter
  when shrinking (jax.image.resize's default antialias would blur downscaled images)."""
  if images.shape[1:3] == (size, size):
    return images
  return jax.image.resize(images, (images.shape[0], size, size, images.shape[3]), "bilinear", antialias=False)


def fid_preprocess(images: jax.Array, size: int = 299) -> jax.Array:
  """pytorch-fid's InceptionV3 input path: float NHWC images in [0, 1] -> resized to size x size -> [-1, 1]."""
  return 2.0 * resize_bilinear(images, size) - 1.0


# PIL's fixed-point resampling (Pillow src/libImaging/Resample.c): coefficients scaled by 2^22, sums rounded half up.
_PIL_PRECISION_BITS = 22


@functools.lru_cache(maxsize=None)
def _pil_bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] int32 coefficients of PIL's 8-bit bilinear resize along one axis, as Pillow computes them
  (precompute_coeffs + normalize_coeffs_8bpc): triangle filter widened by the shrink factor when downscaling,
  half-pixel centres, each row renormalised over the input pixels it reaches, rounded to 2^-22."""
  scale = in_size / out_size
  filter_scale = max(scale, 1.0)
  weights = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    center = (i + 0.5) * scale
    lo = max(int(center - filter_scale + 0.5), 0)
    hi = min(int(center + filter_scale + 0.5), in_size)
    w = np.maximum(0.0, 1.0 - np.abs((np.arange(lo, hi) - center + 0.5) / filter_scale))
    weights[i, lo:hi] = w / w.sum()
  fixed = weights * (1 << _PIL_PRECISION_BITS)
  return np.trunc(np.where(fixed < 0, fixed - 0.5, fixed + 0.5)).astype(np.int32)


def _pil_bilinear_axis(x: jax.Array, axis: int, size: int) -> jax.Array:
  # One pass of PIL's bilinear resize on 8-bit levels (int32 [B, H, W, C]) along image axis 1 or 2, rounded and
  # clipped to 0..255 as PIL stores its intermediate image. Integer arithmetic: exact on every backend
  # (255 * 2^22 < 2^31).
  if x.shape[axis] == size:
    return x
  w = jnp.asarray(_pil_bilinear_weights(x.shape[axis], size))
  spec = "oy,byxc->boxc" if axis == 1 else "ox,byxc->byoc"
  y = jnp.einsum(spec, w, x, preferred_element_type=jnp.int32)
  return jnp.clip((y + (1 << (_PIL_PRECISION_BITS - 1))) >> _PIL_PRECISION_BITS, 0, 255)


def stackgan_preprocess(images: jax.Array, size: int = 299) -> jax.Array:
  """StackGAN's inception_score.py input path: float NHWC images in [0, 1] (uint8 levels / 255) -> scipy.misc.imresize
  (img, (299, 299, 3), interp='bilinear'), i.e. PIL's 8-bit bilinear resize (horizontal pass, rounded to uint8, then
  vertical pass, rounded), bit-exact -> x / 127.5 - 1.

  Recent Pillow (13) does the vertical pass first when an image shrinks more vertically than horizontally; the
  Pillow of StackGAN's time (scipy.misc.imresize was removed in SciPy 1.3) always went horizontal first, as here.
  Square images, e.g. every generated one, resize the same either way."""
  x = jnp.round(images * 255.0).astype(jnp.int32)
  x = _pil_bilinear_axis(_pil_bilinear_axis(x, 2, size), 1, size)
  return x.astype(jnp.float32) / 127.5 - 1.0
