"""Numerical parity of the DAMSM with PyTorch references built here from PyTorch primitives.

The PyTorch side: nn.Embedding + nn.LSTM over pack_padded_sequence (the reference RNN_ENCODER), an
Inception-v3 written to torchvision's module structure and names with the reference CNN_ENCODER forward, and
the reference's words_loss / sent_loss / func_attention re-expressed in PyTorch (per-caption loop as upstream).
Random weights; state dicts go through our converter (attngan_jax.convert_torch). Tolerance: relative error
(max |ours - torch| / max |torch|) <= 1e-4 in fp32.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need PyTorch (the 'parity' extra)")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from torch import nn as tnn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

from attngan_jax import convert_torch  # noqa: E402
from attngan_jax.damsm.loss import damsm_loss, damsm_loss_config  # noqa: E402
from attngan_jax.damsm.image_encoder import ImageEncoder, regions_nchw  # noqa: E402
from t2i_common.weights import WeightMismatchError  # noqa: E402

RTOL = 1e-4


def rel_err(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-12))


# ------------------------------------------------------------------------------ PyTorch references

class TorchTextEncoder(tnn.Module):
  """The reference RNN_ENCODER's computation (eval mode: dropout off); other sizes than its 300-d word embeddings
  and 256-d features (nef, two directions of nef / 2) for the shapes DAMSM."""

  def __init__(self, n_words, embed_dim=300, nef=256):
    super().__init__()
    self.nef = nef
    self.encoder = tnn.Embedding(n_words, embed_dim)
    self.rnn = tnn.LSTM(embed_dim, nef // 2, 1, batch_first=True, bidirectional=True)
    self.encoder.weight.data.uniform_(-0.1, 0.1)

  def forward(self, captions, cap_lens):
    emb = self.encoder(captions)
    packed = pack_padded_sequence(emb, cap_lens, batch_first=True, enforce_sorted=False)
    output, (h, _) = self.rnn(packed)
    output = pad_packed_sequence(output, batch_first=True)[0]
    return output.transpose(1, 2), h.transpose(0, 1).contiguous().view(-1, self.nef)


class BasicConv2d(tnn.Module):
  def __init__(self, cin, cout, **kw):
    super().__init__()
    self.conv = tnn.Conv2d(cin, cout, bias=False, **kw)
    self.bn = tnn.BatchNorm2d(cout, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


class InceptionA(tnn.Module):
  def __init__(self, cin, pool_features):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
    self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
    self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

  def forward(self, x):
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
    return torch.cat([self.branch1x1(x), b5, b3, bp], 1)


class InceptionB(tnn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

  def forward(self, x):
    bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return torch.cat([self.branch3x3(x), bd, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(tnn.Module):
  def __init__(self, cin, c7):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
    self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

  def forward(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = x
    for i in range(1, 6):
      bd = getattr(self, f"branch7x7dbl_{i}")(bd)
    bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
    return torch.cat([self.branch1x1(x), b7, bd, bp], 1)


class InceptionD(tnn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
    self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

  def forward(self, x):
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
    return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(tnn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
    self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
    self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

  def forward(self, x):
    b3 = self.branch3x3_1(x)
    b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
    bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
    return torch.cat([self.branch1x1(x), b3, bd, bp], 1)


class TorchCNNEncoder(tnn.Module):
  """torchvision Inception-v3 blocks (same names) + the reference CNN_ENCODER head and forward."""

  def __init__(self, nef=256):
    super().__init__()
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
    self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = InceptionA(192, 32), InceptionA(256, 64), InceptionA(288, 64)
    self.Mixed_6a = InceptionB(288)
    self.Mixed_6b, self.Mixed_6c = InceptionC(768, 128), InceptionC(768, 160)
    self.Mixed_6d, self.Mixed_6e = InceptionC(768, 160), InceptionC(768, 192)
    self.Mixed_7a, self.Mixed_7b, self.Mixed_7c = InceptionD(768), InceptionE(1280), InceptionE(2048)
    self.emb_features = tnn.Conv2d(768, nef, kernel_size=1, bias=False)
    self.emb_cnn_code = tnn.Linear(2048, nef)
    self.emb_features.weight.data.uniform_(-0.1, 0.1)
    self.emb_cnn_code.weight.data.uniform_(-0.1, 0.1)

  def forward(self, x):
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = F.max_pool2d(x, kernel_size=3, stride=2)
    x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)
    for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e"):
      x = getattr(self, "Mixed_" + name)(x)
    features = x
    for name in ("7a", "7b", "7c"):
      x = getattr(self, "Mixed_" + name)(x)
    x = F.avg_pool2d(x, kernel_size=8).view(x.size(0), -1)
    return self.emb_features(features), self.emb_cnn_code(x)


def randomise_batchnorm(model, seed=0):
  g = torch.Generator().manual_seed(seed)
  for m in model.modules():
    if isinstance(m, tnn.BatchNorm2d):
      c = m.num_features
      m.weight.data = 1 + 0.1 * torch.randn(c, generator=g)
      m.bias.data = 0.1 * torch.randn(c, generator=g)
      m.running_mean.data = 0.1 * torch.randn(c, generator=g)
      m.running_var.data = 0.5 + torch.rand(c, generator=g)


def torch_func_attention(query, context, gamma1):
  """Reference func_attention: query B x D x T, context B x D x h x w."""
  b, t = query.size(0), query.size(2)
  source = context.size(2) * context.size(3)
  context = context.view(b, -1, source)
  attn = torch.bmm(context.transpose(1, 2), query).view(b * source, t)
  attn = torch.softmax(attn, dim=1).view(b, source, t).transpose(1, 2).contiguous().view(b * t, source)
  attn = torch.softmax(attn * gamma1, dim=1).view(b, t, source)
  return torch.bmm(context, attn.transpose(1, 2)), attn


def torch_cosine(x1, x2, dim=1, eps=1e-8):
  return (torch.sum(x1 * x2, dim) / (torch.norm(x1, 2, dim) * torch.norm(x2, 2, dim)).clamp(min=eps)).squeeze()


def class_masks(class_ids):
  b = len(class_ids)
  masks = [(class_ids == class_ids[i]).astype(np.uint8) for i in range(b)]
  for i in range(b):
    masks[i][i] = 0
  return torch.tensor(np.stack(masks)).bool()


def torch_words_loss(img_features, words_emb, cap_lens, class_ids, g1, g2, g3):
  b = words_emb.size(0)
  labels = torch.arange(b)
  sims = []
  for i in range(b):
    n = cap_lens[i]
    word = words_emb[i, :, :n].unsqueeze(0).repeat(b, 1, 1)
    wei, _ = torch_func_attention(word, img_features, g1)
    word, wei = word.transpose(1, 2).reshape(b * n, -1), wei.transpose(1, 2).reshape(b * n, -1)
    row = torch_cosine(word, wei).view(b, n)
    sims.append(torch.log((row * g2).exp().sum(dim=1, keepdim=True)))
  sims = torch.cat(sims, 1) * g3
  sims = sims.masked_fill(class_masks(class_ids), -float("inf"))
  return F.cross_entropy(sims, labels), F.cross_entropy(sims.t(), labels)


def torch_sent_loss(cnn_code, rnn_code, class_ids, g3, eps=1e-8):
  labels = torch.arange(cnn_code.size(0))
  scores = cnn_code @ rnn_code.t()
  norm = torch.norm(cnn_code, 2, dim=1, keepdim=True) @ torch.norm(rnn_code, 2, dim=1, keepdim=True).t()
  scores = (scores / norm.clamp(min=eps) * g3).masked_fill(class_masks(class_ids), -float("inf"))
  return F.cross_entropy(scores, labels), F.cross_entropy(scores.t(), labels)


# ---------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("embed_dim,nef", [(300, 256), (64, 128)])  # the reference's sizes, the shapes DAMSM's
def test_text_encoder_parity(tmp_path, embed_dim, nef):
  torch.manual_seed(0)
  n_words, b, t = 60, 5, 9
  model = TorchTextEncoder(n_words, embed_dim, nef).eval()
  path = tmp_path / "text_encoder.pth"
  torch.save(model.state_dict(), path)
  lengths = np.array([4, 9, 1, 6, 9])  # unsorted, like a batch before the reference's sort
  tokens = np.random.default_rng(0).integers(1, n_words, (b, t))
  tokens[np.arange(t)[None] >= lengths[:, None]] = 0
  with torch.no_grad():
    ref_words, ref_sent = model(torch.tensor(tokens), torch.tensor(lengths))
  convert_torch.main(["--kind", "text_encoder", "--src", str(path), "--out", str(tmp_path / "te")])
  ours, variables, vocab = convert_torch.load_text_encoder(str(tmp_path / "te"))
  assert vocab is None and ours.n_words == n_words
  words, sent = ours.apply(variables, jnp.asarray(tokens), jnp.asarray(lengths))
  words_ref_layout = np.swapaxes(np.asarray(words), 1, 2)
  e_words, e_sent = rel_err(words_ref_layout, ref_words.numpy()), rel_err(sent, ref_sent.numpy())
  print(f"text encoder parity: words rel err {e_words:.2e}, sentence rel err {e_sent:.2e}")
  assert e_words <= RTOL and e_sent <= RTOL


def test_text_encoder_converter_is_strict(tmp_path):
  state = {k: v.numpy() for k, v in TorchTextEncoder(10).state_dict().items()}
  del state["rnn.bias_hh_l0_reverse"]
  state["rnn.weight_ih_l1"] = np.zeros((512, 256), np.float32)
  with pytest.raises(WeightMismatchError) as err:
    convert_torch.convert_state_dict(state, "text_encoder")
  assert "backward/bias_hh" in str(err.value) and "rnn.weight_ih_l1" in str(err.value)


@pytest.fixture(scope="module")
def cnn_pair(tmp_path_factory):
  torch.manual_seed(1)
  model = TorchCNNEncoder()
  randomise_batchnorm(model)
  path = tmp_path_factory.mktemp("damsm") / "image_encoder.pth"
  state = model.state_dict()
  # What PyTorch >= 0.4.1 writes beside the running statistics: must be ignored, not rejected.
  assert any(k.endswith("num_batches_tracked") for k in state)
  torch.save(state, path)
  out = str(path.parent / "ie")
  convert_torch.convert_file("image_encoder", str(path), out)
  ours, variables = convert_torch.load_image_encoder(out)
  return model, ours, variables


def test_image_encoder_parity(cnn_pair):
  model, ours, variables = cnn_pair
  model.eval()
  images = np.random.default_rng(2).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    ref_regions, ref_global = model(torch.tensor(images).permute(0, 3, 1, 2))
  regions, glob = jax.jit(ours.apply)(variables, jnp.asarray(images))
  e_r, e_g = rel_err(regions_nchw(regions), ref_regions.numpy()), rel_err(glob, ref_global.numpy())
  print(f"image encoder parity (eval BN): regions rel err {e_r:.2e}, global rel err {e_g:.2e}")
  assert regions.shape == (2, 17, 17, 256) and glob.shape == (2, 256)
  assert e_r <= RTOL and e_g <= RTOL


def test_image_encoder_train_mode_bn_parity(cnn_pair):
  """bn_mode='train' reproduces the reference's train-mode BatchNorm (batch statistics, running-mean drift)."""
  model, ours, variables = cnn_pair
  model.train()
  images = np.random.default_rng(3).uniform(-1, 1, (2, 80, 80, 3)).astype(np.float32)
  with torch.no_grad():
    ref_regions, ref_global = model(torch.tensor(images).permute(0, 3, 1, 2))
  model.eval()
  train_model = ImageEncoder(bn_mode="train")
  (regions, glob), updates = jax.jit(lambda v, x: train_model.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, jnp.asarray(images))
  e_r, e_g = rel_err(regions_nchw(regions), ref_regions.numpy()), rel_err(glob, ref_global.numpy())
  mean_ours = np.asarray(updates["batch_stats"]["inception"]["Mixed_6e"]["branch_pool"]["bn"]["mean"])
  mean_ref = model.Mixed_6e.branch_pool.bn.running_mean.numpy()
  e_m = rel_err(mean_ours, mean_ref)
  print(f"image encoder parity (train BN): regions {e_r:.2e}, global {e_g:.2e}, running mean {e_m:.2e}")
  assert e_r <= 1e-3 and e_g <= 1e-3 and e_m <= 1e-3  # batch statistics over 2 images: looser


def test_inception_converter_drops_aux_and_is_strict(cnn_pair):
  model, _, _ = cnn_pair
  state = {k: v.numpy() for k, v in model.state_dict().items() if not k.startswith("emb_")}
  state["fc.weight"] = np.zeros((1000, 2048), np.float32)
  state["fc.bias"] = np.zeros((1000,), np.float32)
  state["AuxLogits.conv0.conv.weight"] = np.zeros((128, 768, 1, 1), np.float32)
  _, variables, config = convert_torch.convert_state_dict(state, "inception")
  assert config["num_classes"] == 1000 and variables["params"]["fc"]["kernel"].shape == (2048, 1000)
  _, variables, config = convert_torch.convert_state_dict(state, "inception", keep_fc=False)
  assert config["num_classes"] is None and "fc" not in variables["params"]
  del state["Mixed_7c.branch_pool.bn.running_var"]
  with pytest.raises(WeightMismatchError, match="Mixed_7c/branch_pool/bn/var"):
    convert_torch.convert_state_dict(state, "inception")


def test_damsm_loss_parity():
  rng = np.random.default_rng(4)
  b, t, d = 6, 7, 16
  regions = rng.normal(size=(b, 5, 5, d)).astype(np.float32)
  glob = rng.normal(size=(b, d)).astype(np.float32)
  lengths = np.array([7, 3, 5, 1, 7, 2])
  words = rng.normal(size=(b, t, d)).astype(np.float32)
  words[np.arange(t)[None] >= lengths[:, None]] = 0
  sent = rng.normal(size=(b, d)).astype(np.float32)
  class_ids = np.array([3, 1, 3, 2, 1, 5])
  cfg = damsm_loss_config()
  _, parts = jax.jit(lambda *a: damsm_loss(*a, cfg))(regions, glob, words, sent, lengths, class_ids)
  w0, w1 = torch_words_loss(torch.tensor(regions).permute(0, 3, 1, 2), torch.tensor(words).transpose(1, 2),
                            lengths.tolist(), class_ids, cfg.gamma1, cfg.gamma2, cfg.gamma3)
  s0, s1 = torch_sent_loss(torch.tensor(glob), torch.tensor(sent), class_ids, cfg.gamma3)
  errs = {k: rel_err(parts[k], ref.item()) for k, ref in
          (("w_loss0", w0), ("w_loss1", w1), ("s_loss0", s0), ("s_loss1", s1))}
  print("DAMSM loss parity (rel err):", {k: f"{v:.2e}" for k, v in errs.items()})
  assert max(errs.values()) <= RTOL
  # The matched pairs' attention maps equal the reference's att_maps (image i with its own caption).
  ref_ctx, ref_attn = torch_func_attention(torch.tensor(words[1:2, :3]).transpose(1, 2),
                                           torch.tensor(regions[1:2]).permute(0, 3, 1, 2), cfg.gamma1)
  assert rel_err(parts["attention"][1, :3], ref_attn[0].numpy()) <= RTOL


def test_damsm_loss_gradient_parity():
  """Gradients w.r.t. regions, words and the global vectors equal PyTorch autograd of the reference losses."""
  rng = np.random.default_rng(7)
  b, t, d = 5, 6, 12
  regions = rng.normal(size=(b, 3, 3, d)).astype(np.float32)  # N = 9 < D, as in training (Gram path)
  glob = rng.normal(size=(b, d)).astype(np.float32)
  lengths = np.array([6, 2, 4, 1, 5])
  words = rng.normal(size=(b, t, d)).astype(np.float32)
  words[np.arange(t)[None] >= lengths[:, None]] = 0
  sent = rng.normal(size=(b, d)).astype(np.float32)
  class_ids = np.array([1, 2, 1, 3, 4])
  cfg = damsm_loss_config()
  grads = jax.jit(jax.grad(lambda *a: damsm_loss(*a, lengths, class_ids, cfg)[0], argnums=(0, 1, 2, 3)))(
      regions, glob, words, sent)
  t_regions, t_glob, t_words, t_sent = (torch.tensor(x, requires_grad=True) for x in (regions, glob, words, sent))
  w0, w1 = torch_words_loss(t_regions.permute(0, 3, 1, 2), t_words.transpose(1, 2), lengths.tolist(), class_ids,
                            cfg.gamma1, cfg.gamma2, cfg.gamma3)
  s0, s1 = torch_sent_loss(t_glob, t_sent, class_ids, cfg.gamma3)
  (w0 + w1 + s0 + s1).backward()
  errs = [rel_err(g, ref.grad.numpy()) for g, ref in zip(grads, (t_regions, t_glob, t_words, t_sent))]
  print("DAMSM loss gradient parity (rel err regions, global, words, sentence):", [f"{e:.2e}" for e in errs])
  assert max(errs) <= RTOL
