"""The reference AttnGAN generator and discriminators (taoxugit/AttnGAN code/model.py, GlobalAttention.py)
re-expressed in current PyTorch, for parity tests and benchmarks.

Behaviour and state-dict names are those of the reference (G_NET: ca_net, h_net1..3, img_net1..3; D_NET64 /
D_NET128 / D_NET256: img_code_s16, img_code_s32, ..., UNCOND_DNET, COND_DNET), so reference checkpoints load
into these classes and their state dicts are what the reference writes. Differences, all without effect on the
computation: the global `cfg` is an explicit `TorchGanConfig`; CA_NET takes its reparametrisation noise as an
optional argument (the reference draws it inside); the attention mask is an argument of the forward instead of
`applyMask` state. `mask_bug=True` (default, the reference) tiles the padding mask with `repeat(queryL, 1)`;
`mask_bug=False` gives every caption its own mask (what attngan_jax does by default).

`base_size` below the reference's 64 (the shapes configs; the reference has no such sizes) is generalised as
attngan_jax.gan.generator / discriminator do it: the first stage starts from gf_dim * 2^n channels with
n = log2(base_size / 4) upBlocks (64: gf_dim * 16 and 4, the reference), and a discriminator of S < 64 keeps the
last log2(S / 4) convs of encode_image_by_16times (`discriminators(cfg)` builds one per stage).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn import functional as F


@dataclasses.dataclass
class TorchGanConfig:
  gf_dim: int = 32          # GAN.GF_DIM
  df_dim: int = 64          # GAN.DF_DIM
  r_num: int = 2            # GAN.R_NUM
  branch_num: int = 3       # TREE.BRANCH_NUM
  base_size: int = 64       # TREE.BASE_SIZE: the first stage's image side, 4 * 2^n (the reference: 64)
  z_dim: int = 100          # GAN.Z_DIM
  condition_dim: int = 100  # GAN.CONDITION_DIM
  embedding_dim: int = 256  # TEXT.EMBEDDING_DIM
  mask_bug: bool = True


def halvings(size: int) -> int:
  """n with size = 4 * 2^n: upBlocks from 4 x 4 to size, or strided convs from size down to 4 x 4."""
  n = max(size, 1).bit_length() - 3
  if n < 1 or 4 * 2 ** n != size:
    raise ValueError(f"image size {size} is not 4 * 2^n with n >= 1.")
  return n


def weights_init(m: nn.Module) -> None:
  """The reference's miscc.utils.weights_init (orthogonal convs / linears, BN weight N(1, 0.02))."""
  name = type(m).__name__
  if "Conv" in name:
    nn.init.orthogonal_(m.weight.data, 1.0)
  elif "BatchNorm" in name:
    m.weight.data.normal_(1.0, 0.02)
    m.bias.data.fill_(0)
  elif "Linear" in name:
    nn.init.orthogonal_(m.weight.data, 1.0)
    if m.bias is not None:
      m.bias.data.fill_(0.0)


class GLU(nn.Module):
  def forward(self, x):
    half = x.size(1) // 2
    return x[:, :half] * torch.sigmoid(x[:, half:])


def conv3x3(cin, cout):
  return nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1, bias=False)


def up_block(cin, cout):
  # indices 1 (conv) and 2 (bn) as the reference's upBlock Sequential
  return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv3x3(cin, cout * 2),
                       nn.BatchNorm2d(cout * 2), GLU())


class ResBlock(nn.Module):
  def __init__(self, channels):
    super().__init__()
    self.block = nn.Sequential(conv3x3(channels, channels * 2), nn.BatchNorm2d(channels * 2), GLU(),
                               conv3x3(channels, channels), nn.BatchNorm2d(channels))

  def forward(self, x):
    return self.block(x) + x


class CA_NET(nn.Module):
  def __init__(self, cfg: TorchGanConfig):
    super().__init__()
    self.c_dim = cfg.condition_dim
    self.fc = nn.Linear(cfg.embedding_dim, cfg.condition_dim * 4, bias=True)
    self.relu = GLU()  # the reference's name for it

  def forward(self, sent_emb, eps=None):
    x = self.relu(self.fc(sent_emb))
    mu, logvar = x[:, :self.c_dim], x[:, self.c_dim:]
    std = torch.exp(0.5 * logvar)
    if eps is None:
      eps = torch.randn_like(std)
    return mu + eps * std, mu, logvar


class INIT_STAGE_G(nn.Module):
  """num_up upBlocks (upsample1, ...) halving the channels from ngf at 4 x 4 (the reference: 4, ngf = 16 gf)."""

  def __init__(self, ngf, cfg: TorchGanConfig, num_up: int = 4):
    super().__init__()
    self.gf_dim, self.num_up = ngf, num_up
    self.fc = nn.Sequential(nn.Linear(cfg.z_dim + cfg.condition_dim, ngf * 4 * 4 * 2, bias=False),
                            nn.BatchNorm1d(ngf * 4 * 4 * 2), GLU())
    for i in range(1, num_up + 1):
      setattr(self, f"upsample{i}", up_block(ngf // 2 ** (i - 1), ngf // 2 ** i))

  def forward(self, z, c):
    x = self.fc(torch.cat((c, z), 1)).view(-1, self.gf_dim, 4, 4)
    for i in range(1, self.num_up + 1):
      x = getattr(self, f"upsample{i}")(x)
    return x


class GlobalAttentionGeneral(nn.Module):
  def __init__(self, idf, cdf, mask_bug):
    super().__init__()
    self.conv_context = nn.Conv2d(cdf, idf, kernel_size=1, stride=1, padding=0, bias=False)
    self.mask_bug = mask_bug

  def forward(self, x, context, mask):
    """x: B x idf x ih x iw; context: B x cdf x T; mask: B x T (True = padding)."""
    b, _, ih, iw = x.shape
    n_query, n_source = ih * iw, context.size(2)
    target_t = x.view(b, -1, n_query).transpose(1, 2)               # B x Q x idf
    source = self.conv_context(context.unsqueeze(3)).squeeze(3)     # B x idf x T
    attn = torch.bmm(target_t, source).view(b * n_query, n_source)  # row b * Q + q
    if mask is not None:
      rows = mask.repeat(n_query, 1) if self.mask_bug else mask.repeat_interleave(n_query, 0)
      attn = attn.masked_fill(rows, float("-inf"))
    attn = F.softmax(attn, dim=1).view(b, n_query, n_source).transpose(1, 2)  # B x T x Q
    context_out = torch.bmm(source, attn).view(b, -1, ih, iw)
    return context_out, attn.reshape(b, -1, ih, iw)


class NEXT_STAGE_G(nn.Module):
  def __init__(self, ngf, cfg: TorchGanConfig):
    super().__init__()
    self.att = GlobalAttentionGeneral(ngf, cfg.embedding_dim, cfg.mask_bug)
    self.residual = nn.Sequential(*[ResBlock(ngf * 2) for _ in range(cfg.r_num)])
    self.upsample = up_block(ngf * 2, ngf)

  def forward(self, h, word_embs, mask):
    c, att = self.att(h, word_embs, mask)
    return self.upsample(self.residual(torch.cat((h, c), 1))), att


class GET_IMAGE_G(nn.Module):
  def __init__(self, ngf):
    super().__init__()
    self.img = nn.Sequential(conv3x3(ngf, 3), nn.Tanh())

  def forward(self, h):
    return self.img(h)


class G_NET(nn.Module):
  def __init__(self, cfg: TorchGanConfig):
    super().__init__()
    self.branch_num = cfg.branch_num
    self.ca_net = CA_NET(cfg)
    num_up = halvings(cfg.base_size)
    self.h_net1 = INIT_STAGE_G(cfg.gf_dim * 2 ** num_up, cfg, num_up)
    self.img_net1 = GET_IMAGE_G(cfg.gf_dim)
    for i in range(2, cfg.branch_num + 1):
      setattr(self, f"h_net{i}", NEXT_STAGE_G(cfg.gf_dim, cfg))
      setattr(self, f"img_net{i}", GET_IMAGE_G(cfg.gf_dim))

  def forward(self, z, sent_emb, word_embs, mask, eps=None):
    """word_embs: B x D x T (the reference layout); returns (images NCHW, attention maps, mu, logvar)."""
    c, mu, logvar = self.ca_net(sent_emb, eps)
    h = self.h_net1(z, c)
    images, maps = [self.img_net1(h)], []
    for i in range(2, self.branch_num + 1):
      h, att = getattr(self, f"h_net{i}")(h, word_embs, mask)
      images.append(getattr(self, f"img_net{i}")(h))
      maps.append(att)
    return images, maps, mu, logvar


# ------------------------------------------------------------------------------------------ discriminators

def block3x3_leaky_relu(cin, cout):
  return nn.Sequential(conv3x3(cin, cout), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True))


def down_block(cin, cout):
  return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout),
                       nn.LeakyReLU(0.2, inplace=True))


def encode_image_by_16times(ndf, num_convs: int = 4):
  """Strided 4x4 convs ending at 8 ndf channels, BatchNorm on all but the first; num_convs < 4 (images below
  64 px) keeps the last ones (the first then takes the 3 image channels)."""
  layers = []
  for i in range(num_convs):
    cin, cout = (3 if i == 0 else ndf * 8 // 2 ** (num_convs - i)), ndf * 8 // 2 ** (num_convs - 1 - i)
    layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False)] + ([nn.BatchNorm2d(cout)] if i else [])
    layers.append(nn.LeakyReLU(0.2, inplace=True))
  return nn.Sequential(*layers)


class D_GET_LOGITS(nn.Module):
  def __init__(self, ndf, nef, bcondition=False):
    super().__init__()
    self.ef_dim, self.bcondition = nef, bcondition
    if bcondition:
      self.jointConv = block3x3_leaky_relu(ndf * 8 + nef, ndf * 8)
    self.outlogits = nn.Sequential(nn.Conv2d(ndf * 8, 1, kernel_size=4, stride=4), nn.Sigmoid())

  def forward(self, h, c=None):
    return self.outlogits[1](self.logits(h, c))  # the reference: outlogits (conv, sigmoid) after jointConv

  def logits(self, h, c=None):
    """The same before the sigmoid (the reference has no such method; for comparing logits)."""
    if self.bcondition and c is not None:
      c = c.view(-1, self.ef_dim, 1, 1).repeat(1, 1, 4, 4)
      h = self.jointConv(torch.cat((h, c), 1))
    return self.outlogits[0](h).view(-1)


class _DNet(nn.Module):
  def __init__(self, cfg: TorchGanConfig, num_convs: int = 4):
    super().__init__()
    ndf = cfg.df_dim
    self.img_code_s16 = encode_image_by_16times(ndf, num_convs)
    self.UNCOND_DNET = D_GET_LOGITS(ndf, cfg.embedding_dim, bcondition=False)
    self.COND_DNET = D_GET_LOGITS(ndf, cfg.embedding_dim, bcondition=True)


class D_NET64(_DNet):
  """image_size < 64: the same with the last log2(image_size / 4) encoder convs (no reference; see the top)."""

  def __init__(self, cfg: TorchGanConfig, image_size: int = 64):
    if image_size > 64:
      raise ValueError(f"D_NET64 takes images of at most 64 px, got {image_size}: use D_NETS[{image_size}].")
    super().__init__(cfg, halvings(image_size))

  def forward(self, x):
    return self.img_code_s16(x)


class D_NET128(_DNet):
  def __init__(self, cfg: TorchGanConfig):
    super().__init__(cfg)
    ndf = cfg.df_dim
    self.img_code_s32 = down_block(ndf * 8, ndf * 16)
    self.img_code_s32_1 = block3x3_leaky_relu(ndf * 16, ndf * 8)

  def forward(self, x):
    return self.img_code_s32_1(self.img_code_s32(self.img_code_s16(x)))


class D_NET256(_DNet):
  def __init__(self, cfg: TorchGanConfig):
    super().__init__(cfg)
    ndf = cfg.df_dim
    self.img_code_s32 = down_block(ndf * 8, ndf * 16)
    self.img_code_s64 = down_block(ndf * 16, ndf * 32)
    self.img_code_s64_1 = block3x3_leaky_relu(ndf * 32, ndf * 16)
    self.img_code_s64_2 = block3x3_leaky_relu(ndf * 16, ndf * 8)

  def forward(self, x):
    x = self.img_code_s64(self.img_code_s32(self.img_code_s16(x)))
    return self.img_code_s64_2(self.img_code_s64_1(x))


D_NETS = {64: D_NET64, 128: D_NET128, 256: D_NET256}


def discriminator(cfg: TorchGanConfig, image_size: int) -> nn.Module:
  """D_NET64 / D_NET128 / D_NET256, or below 64 px the generalised D_NET64."""
  if image_size > 256:
    raise ValueError(f"images of {image_size} px: the reference's discriminators stop at 256 (D_NET256).")
  return D_NETS[image_size](cfg) if image_size >= 64 else D_NET64(cfg, image_size)


def discriminators(cfg: TorchGanConfig) -> list[nn.Module]:
  """One discriminator per generator stage (images base_size * 2^i, i < branch_num), as the reference's
  condGANTrainer.build_models for base size 64."""
  return [discriminator(cfg, cfg.base_size * 2 ** i) for i in range(cfg.branch_num)]


def randomize_batchnorm(module: nn.Module, generator: torch.Generator) -> None:
  """Random running statistics and affine parameters, so eval-mode parity exercises them."""
  for m in module.modules():
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
      n = m.num_features
      m.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
      m.running_var.copy_(0.5 + torch.rand(n, generator=generator))
      m.weight.data.copy_(1 + 0.1 * torch.randn(n, generator=generator))
      m.bias.data.copy_(0.1 * torch.randn(n, generator=generator))
