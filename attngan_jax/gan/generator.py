"""The attentional generative network (reference code/model.py G_NET and its stages), channels-last.

    c, mu, logvar = CA(sentence)                                   conditioning augmentation
    h1 = F0(c, z)            -> image 1 at base_size               INIT_STAGE_G + GET_IMAGE_G
    h2, beta1 = F1(h1, words) -> image 2 at 2 x base_size          NEXT_STAGE_G (word attention, Eq. 2)
    h3, beta2 = F2(h2, words) -> image 3 at 4 x base_size          (branch_num = 3)

Call (eval mode: BatchNorm running statistics):

    images, attn_maps, mu, logvar = gen.apply(variables, z, sent_emb, words_emb, mask, ca_noise=eps)

  z [B, z_dim]; sent_emb [B, embedding_dim]; words_emb [B, T, embedding_dim] (as attngan_jax.damsm.text_encoder
  returns it; the reference layout is [B, D, T]); mask [B, T] bool, True at padding (the reference's
  `captions == 0`); ca_noise [B, condition_dim] N(0, 1) noise of the CA reparametrisation, or None to draw it from
  the 'ca' RNG stream (`rngs={"ca": key}`).
  images: one per stage, [B, S, S, 3] float32 in [-1, 1], S = base_size * 2^i; attn_maps: one per attention stage
  (branch_num - 1), [B, T, S_i, S_i] at the resolution of the features attended (base_size * 2^(i-1)).

Train mode: `gen.apply(variables, ..., train=True, mutable=["batch_stats"])` returns (outputs, {"batch_stats":
...}) with the BatchNorms on batch statistics and their running averages updated as in PyTorch.

The first stage starts from gf_dim * 2^n channels at 4 x 4 and applies n = log2(base_size / 4) upBlocks, halving
the channels each time, so it always ends at gf_dim channels (base_size 64: n = 4 and gf_dim * 16, the
reference); smaller base sizes (e.g. 16 or 32 for CPU-sized data) drop upBlocks.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import flax.linen as nn
import ml_collections

from attngan_jax.gan.attention import WordAttention
from attngan_jax.gan.blocks import BatchNorm, ResBlock, UpBlock, conv3x3, glu
from attngan_jax.initializers import orthogonal


def num_init_upblocks(base_size: int) -> int:
  """upBlocks of the first stage: base_size = 4 * 2^n (64 -> 4, the reference)."""
  n = 0
  while 4 * 2 ** n < base_size:
    n += 1
  if base_size < 8 or 4 * 2 ** n != base_size:
    raise ValueError(f"model.base_size must be 4 * 2^n with n >= 1 (8, 16, 32, 64, ...), got {base_size}.")
  return n


class CANet(nn.Module):
  """CA_NET: Linear(E -> 4 * cond) -> GLU -> (mu, logvar); c = mu + eps * exp(logvar / 2)."""
  condition_dim: int = 100

  @nn.compact
  def __call__(self, sent_emb: jax.Array, noise: Optional[jax.Array] = None):
    x = glu(nn.Dense(4 * self.condition_dim, kernel_init=orthogonal(), bias_init=nn.initializers.zeros,
                     name="fc")(sent_emb))
    mu, logvar = x[:, :self.condition_dim], x[:, self.condition_dim:]
    if noise is None:
      noise = jax.random.normal(self.make_rng("ca"), mu.shape, mu.dtype)
    return mu + noise * jnp.exp(0.5 * logvar), mu, logvar


class InitStageG(nn.Module):
  """INIT_STAGE_G: cat(c, z) -> Linear (no bias) -> BN1d -> GLU -> [B, 4, 4, gf * 2^n] -> n upBlocks -> gf."""
  gf_dim: int
  num_upblocks: int

  @nn.compact
  def __call__(self, z: jax.Array, c: jax.Array, train: bool) -> jax.Array:
    width = self.gf_dim * 2 ** self.num_upblocks
    x = nn.Dense(width * 4 * 4 * 2, use_bias=False, kernel_init=orthogonal(), name="fc")(
        jnp.concatenate([c, z], axis=-1))
    x = glu(BatchNorm(name="fc_bn")(x, train))
    # The reference views the vector as [B, C, 4, 4] (channels first); keep that order so weights map 1:1.
    x = jnp.transpose(x.reshape(x.shape[0], width, 4, 4), (0, 2, 3, 1))
    for i in range(self.num_upblocks):
      width //= 2
      x = UpBlock(width, name=f"upsample{i + 1}")(x, train)
    return x


class NextStageG(nn.Module):
  """NEXT_STAGE_G: word attention -> cat(h, context) -> r_num ResBlocks(2 gf) -> upBlock(2 gf -> gf).

  Returns the features at twice the resolution and the attention maps [B, T, H, W] at the input resolution.
  (The reference also passes the sentence code here and ignores it.)
  """
  gf_dim: int
  r_num: int = 2
  reference_mask_bug: bool = False

  @nn.compact
  def __call__(self, h: jax.Array, words: jax.Array, mask: jax.Array, train: bool):
    context, maps = WordAttention(self.reference_mask_bug, name="att")(h, words, mask)
    x = jnp.concatenate([h, context], axis=-1)
    for i in range(self.r_num):
      x = ResBlock(name=f"residual_{i}")(x, train)
    return UpBlock(self.gf_dim, name="upsample")(x, train), maps


class GetImageG(nn.Module):
  """GET_IMAGE_G: conv3x3(gf -> 3) + tanh."""

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    return jnp.tanh(conv3x3(3, "conv")(h))


class Generator(nn.Module):
  """G_NET with `branch_num` stages (module docstring for the call). Submodules: ca_net, h_net1 (InitStageG),
  h_net2.. (NextStageG), img_net1.. (GetImageG), named as the reference's."""
  gf_dim: int = 32
  r_num: int = 2
  branch_num: int = 3
  base_size: int = 64
  z_dim: int = 100
  condition_dim: int = 100
  embedding_dim: int = 256
  reference_mask_bug: bool = False

  @nn.compact
  def __call__(self, z: jax.Array, sent_emb: jax.Array, words_emb: jax.Array, mask: jax.Array,
               ca_noise: Optional[jax.Array] = None, train: bool = False):
    self._check_inputs(z, sent_emb, words_emb, mask, ca_noise)
    if self.branch_num < 1:
      raise ValueError(f"model.branch_num must be >= 1, got {self.branch_num}.")
    c, mu, logvar = CANet(self.condition_dim, name="ca_net")(sent_emb, ca_noise)
    h = InitStageG(self.gf_dim, num_init_upblocks(self.base_size), name="h_net1")(z, c, train)
    images, maps = [GetImageG(name="img_net1")(h)], []
    for i in range(2, self.branch_num + 1):
      h, beta = NextStageG(self.gf_dim, self.r_num, self.reference_mask_bug, name=f"h_net{i}")(
          h, words_emb, mask, train)
      images.append(GetImageG(name=f"img_net{i}")(h))
      maps.append(beta)
    return images, maps, mu, logvar

  def _check_inputs(self, z, sent_emb, words_emb, mask, ca_noise) -> None:
    b = z.shape[0]
    if z.shape != (b, self.z_dim):
      raise ValueError(f"z must be [B, z_dim={self.z_dim}], got shape {z.shape}.")
    if sent_emb.shape != (b, self.embedding_dim):
      raise ValueError(f"sent_emb must be [B={b}, embedding_dim={self.embedding_dim}], got shape {sent_emb.shape}.")
    if words_emb.ndim != 3 or words_emb.shape[0] != b or words_emb.shape[2] != self.embedding_dim:
      hint = (" (that looks like the reference layout [B, D, T]: use jnp.swapaxes(words_emb, 1, 2))"
              if words_emb.ndim == 3 and words_emb.shape[1] == self.embedding_dim else "")
      raise ValueError(f"words_emb must be [B={b}, T, embedding_dim={self.embedding_dim}], got shape "
                       f"{words_emb.shape}{hint}.")
    if mask.shape != words_emb.shape[:2] or mask.dtype != jnp.bool_:
      raise ValueError(f"mask must be bool [B, T] = {words_emb.shape[:2]} (True at padding), got "
                       f"{mask.dtype} {mask.shape}.")
    if ca_noise is not None and ca_noise.shape != (b, self.condition_dim):
      raise ValueError(f"ca_noise must be [B={b}, condition_dim={self.condition_dim}], got shape {ca_noise.shape}.")

  @property
  def image_sizes(self) -> tuple[int, ...]:
    """Side of each stage's images."""
    return tuple(self.base_size * 2 ** i for i in range(self.branch_num))


def make_generator(model: ml_collections.ConfigDict) -> Generator:
  """The Generator of a config's `model` section (attngan_jax.gan.config.gan_model_config)."""
  num_init_upblocks(model.base_size)  # validates
  return Generator(gf_dim=model.gf_dim, r_num=model.r_num, branch_num=model.branch_num, base_size=model.base_size,
                   z_dim=model.z_dim, condition_dim=model.condition_dim, embedding_dim=model.embedding_dim,
                   reference_mask_bug=model.reference_mask_bug)
