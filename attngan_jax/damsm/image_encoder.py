"""DAMSM image encoder (the reference CNN_ENCODER) and its configuration.

Inception-v3 backbone (default): images in [-1, 1] (no ImageNet normalisation) are resized bilinearly to
299 x 299 with half-pixel centres and no antialiasing (PyTorch's nn.Upsample(mode='bilinear'),
align_corners=False); Mixed_6e (17 x 17 x 768) -> 1x1 conv 768 -> D without bias gives the region features,
Mixed_7c -> global average -> Linear 2048 -> D gives the global image vector. The two new layers start
uniform in +-0.1 (the Linear bias keeps PyTorch's default), as in the reference.

Outputs are channels-last: regions [B, h, w, D] (17 x 17 at 299 px) and global [B, D]; `regions_nchw` gives
the reference layout B x D x h x w.

BatchNorm of the frozen backbone: bn_mode "frozen" (default) always uses the running statistics;
"train" reproduces the reference, which runs the encoder in train mode so the Inception BatchNorms use batch
statistics and their running averages drift during pretraining (call with train=True and
mutable=["batch_stats"]). The backbone's weights are frozen by the optimizer (attngan_jax.damsm.optim).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn
import ml_collections

from attngan_jax.inception import InceptionV3
from attngan_jax.damsm.small_cnn import SmallCNN
from attngan_jax.initializers import uniform

BACKBONES = ("inception_v3", "small_cnn")
BN_MODES = ("frozen", "train")


def image_encoder_config(backbone: str = "inception_v3", embed_dim: int = 256) -> ml_collections.ConfigDict:
  """Options of the DAMSM image encoder (config.model.image_encoder)."""
  return ml_collections.ConfigDict({
      "backbone": backbone,       # "inception_v3" (ImageNet-pretrained, frozen) or "small_cnn" (trained)
      "embed_dim": embed_dim,     # D, shared with the text encoder
      "input_size": 299,          # inception_v3 only: the resize target
      "bn_mode": "frozen",        # inception_v3 only: "frozen" or "train" (reference behaviour)
      "train_backbone": backbone == "small_cnn",
      "small_cnn_width": 32,
  })


class ImageEncoder(nn.Module):
  """CNN_ENCODER: images [B, H, W, 3] in [-1, 1] -> (regions [B, h, w, D], global [B, D])."""
  embed_dim: int = 256
  backbone: str = "inception_v3"
  input_size: int = 299
  bn_mode: str = "frozen"
  small_cnn_width: int = 32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"the image encoder expects NHWC RGB images [B, H, W, 3], got shape {images.shape}.")
    if self.backbone == "inception_v3":
      if self.bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}, got {self.bn_mode!r}.")
      b = images.shape[0]
      x = jax.image.resize(images, (b, self.input_size, self.input_size, 3), "bilinear", antialias=False)
      feats = InceptionV3(name="inception")(x, train=train and self.bn_mode == "train")
      regions, pooled = feats["mixed_6e"], feats["pool"]
    elif self.backbone == "small_cnn":
      feats = SmallCNN(self.small_cnn_width, name="small_cnn")(images, train=train)
      regions, pooled = feats["regions"], feats["pool"]
    else:
      raise ValueError(f"unknown image encoder backbone {self.backbone!r}; choose one of {BACKBONES}.")
    regions = nn.Conv(self.embed_dim, (1, 1), use_bias=False, kernel_init=uniform(0.1),
                      name="emb_features")(regions)
    fan_in = pooled.shape[-1]
    glob = nn.Dense(self.embed_dim, kernel_init=uniform(0.1), bias_init=uniform(fan_in ** -0.5),
                    name="emb_cnn_code")(pooled)
    return regions, glob

  @property
  def backbone_name(self) -> str:
    """Name of the backbone's parameter subtree."""
    return "inception" if self.backbone == "inception_v3" else "small_cnn"


def make_image_encoder(cfg: ml_collections.ConfigDict) -> ImageEncoder:
  if cfg.backbone not in BACKBONES:
    raise ValueError(f"model.image_encoder.backbone must be one of {BACKBONES}, got {cfg.backbone!r}.")
  return ImageEncoder(embed_dim=cfg.embed_dim, backbone=cfg.backbone, input_size=cfg.input_size,
                      bn_mode=cfg.bn_mode, small_cnn_width=cfg.small_cnn_width)


def regions_nchw(regions: jax.Array) -> jax.Array:
  """[B, h, w, D] -> the reference layout [B, D, h, w]."""
  return jnp.transpose(regions, (0, 3, 1, 2))
