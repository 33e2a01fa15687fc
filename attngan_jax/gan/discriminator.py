"""The stage discriminators (reference code/model.py D_NET64 / D_NET128 / D_NET256 and D_GET_LOGITS), channels-last.

A discriminator for S x S images reduces them to 4 x 4 x 8 df features:
  S = 64:  encode_image_by_16times (4 strided 4x4 convs, df -> 8 df; BatchNorm on all but the first)  = D_NET64
  S = 128: + downBlock(8 df -> 16 df) + Block3x3_leakRelu(16 df -> 8 df)                              = D_NET128
  S = 256: + downBlocks (-> 16 df -> 32 df) + Block3x3_leakRelu 32 -> 16 -> 8 df                      = D_NET256
  in general n = log2(S / 4) halvings: min(n, 4) strided convs ending at 8 df, then n - 4 downBlocks doubling
  the channels and as many Block3x3_leakRelu halving them back; S < 64 (small base sizes) keeps the last n
  of the four encoder convs (e.g. S = 32: 3 -> 2 df -> 4 df -> 8 df).
Two heads on the features, as logits (before the sigmoid the reference applies inside D_GET_LOGITS; GAN losses
use BCE-with-logits, `optax.sigmoid_binary_cross_entropy`, which equals the reference's BCE on sigmoid outputs):
  uncond_logits(features) = Conv(8 df -> 1, k4, s4, bias)                                          [B]
  cond_logits(features, sent_emb) = Conv(k4, s4)(Block3x3_leakRelu(cat(features, sent_emb tiled 4 x 4)))  [B]

Use (one `apply` per call, or several methods in one apply through a function of the module):
  features = d.apply(v, images, train, method="encode")                          # [B, 4, 4, 8 df]
  u = d.apply(v, features, method="uncond_logits")
  c = d.apply(v, features, sent_emb, train, method="cond_logits")
  features, u, c = d.apply(v, images, sent_emb)                                   # all three (also for init)
In train mode pass `mutable=["batch_stats"]`; like the reference, each call normalises with its own batch (real,
fake and wrong pairs go through separately) and updates the running statistics in call order.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn
import ml_collections

from attngan_jax.gan.blocks import LEAKY_SLOPE, BatchNorm, Block3x3LeakyReLU, DownBlock, conv4x4_down
from attngan_jax.initializers import orthogonal, torch_default_bias

FEATURE_SIZE = 4  # the heads' 4x4 stride-4 conv reads a 4 x 4 map


def num_halvings(image_size: int) -> int:
  """n with image_size = 4 * 2^n (n >= 1): how often a discriminator halves its input."""
  n = 0
  while FEATURE_SIZE * 2 ** n < image_size:
    n += 1
  if n < 1 or FEATURE_SIZE * 2 ** n != image_size:
    raise ValueError(f"a discriminator needs square images of side 4 * 2^n (8, 16, 32, 64, 128, 256, ...), "
                     f"got {image_size}.")
  return n


class EncodeImage(nn.Module):
  """encode_image_by_16times (num_convs = 4): strided 4x4 convs ending at 8 df channels, LeakyReLU 0.2,
  BatchNorm on all but the first conv. Fewer convs (small images) keep the last ones."""
  df_dim: int
  num_convs: int = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i in range(self.num_convs):
      x = conv4x4_down(self.df_dim * 8 // 2 ** (self.num_convs - 1 - i), f"conv{i}")(x)
      if i > 0:
        x = BatchNorm(name=f"bn{i}")(x, train)
      x = nn.leaky_relu(x, LEAKY_SLOPE)
    return x


class DGetLogits(nn.Module):
  """D_GET_LOGITS without the final sigmoid: [B, 4, 4, 8 df] (+ sentence [B, E] if conditional) -> logits [B]."""
  df_dim: int
  conditional: bool

  @nn.compact
  def __call__(self, features: jax.Array, sent_emb=None, train: bool = False) -> jax.Array:
    if self.conditional:
      b = features.shape[0]
      tiled = jnp.broadcast_to(sent_emb[:, None, None, :], (b, FEATURE_SIZE, FEATURE_SIZE, sent_emb.shape[-1]))
      features = Block3x3LeakyReLU(self.df_dim * 8, name="joint_conv")(
          jnp.concatenate([features, tiled], axis=-1), train)
    fan_in = self.df_dim * 8 * FEATURE_SIZE * FEATURE_SIZE
    out = nn.Conv(1, (FEATURE_SIZE, FEATURE_SIZE), strides=FEATURE_SIZE, padding="VALID", kernel_init=orthogonal(),
                  bias_init=torch_default_bias(fan_in), name="outlogits")(features)
    return out.reshape(-1)


class Discriminator(nn.Module):
  """D_NET{image_size} (module docstring). Submodules: image_encoder, down_{j}, squeeze_{j}, uncond_dnet,
  cond_dnet (the reference's img_code_s16, img_code_s32/s64, img_code_s*_1/_2, UNCOND_DNET, COND_DNET)."""
  image_size: int = 64
  df_dim: int = 64
  embedding_dim: int = 256

  def setup(self):
    n = num_halvings(self.image_size)
    n_enc = min(n, 4)
    extra = n - n_enc
    self.image_encoder = EncodeImage(self.df_dim, n_enc)
    self.down = [DownBlock(self.df_dim * 8 * 2 ** (j + 1)) for j in range(extra)]
    self.squeeze = [Block3x3LeakyReLU(self.df_dim * 8 * 2 ** (extra - 1 - j)) for j in range(extra)]
    self.uncond_dnet = DGetLogits(self.df_dim, conditional=False)
    self.cond_dnet = DGetLogits(self.df_dim, conditional=True)

  def encode(self, images: jax.Array, train: bool = False) -> jax.Array:
    """images [B, S, S, 3] in [-1, 1] -> features [B, 4, 4, 8 df]."""
    s = self.image_size
    if images.ndim != 4 or images.shape[1:] != (s, s, 3):
      raise ValueError(f"this discriminator takes images [B, {s}, {s}, 3] (NHWC), got shape {images.shape}.")
    x = self.image_encoder(images, train)
    for block in self.down:
      x = block(x, train)
    for block in self.squeeze:
      x = block(x, train)
    return x

  def uncond_logits(self, features: jax.Array) -> jax.Array:
    """Unconditional real/fake logits [B] (no BatchNorm: no train flag)."""
    return self.uncond_dnet(features)

  def cond_logits(self, features: jax.Array, sent_emb: jax.Array, train: bool = False) -> jax.Array:
    """Image-sentence matching logits [B]; sent_emb [B, embedding_dim]."""
    if sent_emb.shape != (features.shape[0], self.embedding_dim):
      raise ValueError(f"sent_emb must be [B={features.shape[0]}, embedding_dim={self.embedding_dim}], got shape "
                       f"{sent_emb.shape}.")
    return self.cond_dnet(features, sent_emb, train)

  def __call__(self, images: jax.Array, sent_emb: jax.Array, train: bool = False):
    """(features, uncond logits, cond logits) of matching images and sentences."""
    features = self.encode(images, train)
    return features, self.uncond_logits(features), self.cond_logits(features, sent_emb, train)


def make_discriminators(model: ml_collections.ConfigDict) -> list[Discriminator]:
  """One discriminator per generator stage: image sides base_size * 2^i, i < branch_num."""
  return [Discriminator(image_size=model.base_size * 2 ** i, df_dim=model.df_dim, embedding_dim=model.embedding_dim)
          for i in range(model.branch_num)]
