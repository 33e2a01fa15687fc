"""Parity of the AttnGAN GAN losses (attngan_jax.gan.losses) with the reference's, restated in PyTorch
(tests/helpers/attngan_torch_losses.py): the discriminator loss with the wrong-pair term, the generator loss with
the DAMSM term on the last stage (same-class masking), and the KL term; values and gradients.

Both sides use the same small discriminators and DAMSM image encoder (a linear feature map with unconditional and
conditional heads; a strided patch projection): sigmoid + BCELoss on the PyTorch side as upstream, logits + our
BCE on logits on ours. Tolerance: relative error (max |ours - torch| / max |torch|) <= 1e-5 in fp32 for values,
1e-4 for gradients.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need PyTorch (the 'parity' extra)")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from torch import nn as tnn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from attngan_jax.gan import losses  # noqa: E402
from helpers.attngan_torch_losses import (reference_discriminator_loss, reference_generator_loss,  # noqa: E402
                                          reference_kl_loss)

D_EMB, FEATS = 12, 10
RTOL_VALUE, RTOL_GRAD = 1e-5, 1e-4


def rel_err(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-12))


# ------------------------------------------------------------------------------ the same small models twice

class TorchD(tnn.Module):
  """features = LeakyReLU(Linear(image)); UNCOND_DNET / COND_DNET give probabilities as the reference's heads."""

  def __init__(self, size: int, seed: int):
    super().__init__()
    torch.manual_seed(seed)
    self.feat = tnn.Linear(3 * size * size, FEATS)
    self.uncond = tnn.Linear(FEATS, 1)
    self.cond = tnn.Linear(FEATS + D_EMB, 1)

  def forward(self, x):
    return F.leaky_relu(self.feat(x.flatten(1)), 0.2)

  def UNCOND_DNET(self, f):  # noqa: N802 (the reference's name)
    return torch.sigmoid(self.uncond(f)).view(-1)

  def COND_DNET(self, f, s):  # noqa: N802
    return torch.sigmoid(self.cond(torch.cat([f, s], 1))).view(-1)


def d_params(net: TorchD) -> dict:
  return {k: jnp.asarray(v.detach().numpy()) for k, v in net.state_dict().items()}


def jax_features(p, images_nhwc):
  x = jnp.transpose(images_nhwc, (0, 3, 1, 2)).reshape(images_nhwc.shape[0], -1)  # torch's flatten order
  return jax.nn.leaky_relu(x @ p["feat.weight"].T + p["feat.bias"], 0.2)


def jax_uncond(p, f):
  return (f @ p["uncond.weight"].T + p["uncond.bias"])[:, 0]


def jax_cond(p, f, s):
  return (jnp.concatenate([f, s], 1) @ p["cond.weight"].T + p["cond.bias"])[:, 0]


class TorchEncoder(tnn.Module):
  """regions = 2x2 stride-2 patch projection (B x D x h x w), global = Linear(mean of the regions)."""

  def __init__(self):
    super().__init__()
    torch.manual_seed(7)
    self.patch = tnn.Conv2d(3, D_EMB, 2, stride=2, bias=False)
    self.code = tnn.Linear(D_EMB, D_EMB)

  def forward(self, x):
    regions = self.patch(x)
    return regions, self.code(regions.mean((2, 3)))


def jax_encoder(p, images_nhwc):
  """(regions [B, h, w, D], global [B, D]) of TorchEncoder's weights."""
  b, h, w, _ = images_nhwc.shape
  patches = images_nhwc.reshape(b, h // 2, 2, w // 2, 2, 3)
  regions = jnp.einsum("byiwjc,dcij->bywd", patches, p["patch.weight"])
  return regions, regions.mean((1, 2)) @ p["code.weight"].T + p["code.bias"]


def nchw(x):
  return torch.tensor(np.asarray(x)).permute(0, 3, 1, 2)


def make_batch(b=6, t=7, seed=0):
  rng = np.random.default_rng(seed)
  lengths = np.array([7, 3, 5, 1, 7, 2])[:b]
  words = rng.normal(size=(b, t, D_EMB)).astype(np.float32)
  words[np.arange(t)[None] >= lengths[:, None]] = 0  # the text encoder's zeros past the length
  return dict(words=words, sentence=rng.normal(size=(b, D_EMB)).astype(np.float32), lengths=lengths,
              class_ids=np.array([3, 1, 3, 2, 1, 5])[:b],
              real=[rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32) for s in (8, 16)],
              fake=[np.tanh(rng.normal(size=(b, s, s, 3))).astype(np.float32) for s in (8, 16)],
              mu=rng.normal(size=(b, 5)).astype(np.float32), logvar=rng.normal(size=(b, 5)).astype(np.float32))


# ---------------------------------------------------------------------------------------- tests

def test_discriminator_loss_parity_values_and_gradients():
  x = make_batch()
  net = TorchD(16, seed=1)
  sent = torch.tensor(x["sentence"])
  ref = reference_discriminator_loss(net, nchw(x["real"][1]), nchw(x["fake"][1]), sent)
  ref.backward()

  def loss_fn(p):
    real_f = jax_features(p, x["real"][1])
    fake_f = jax_features(p, jax.lax.stop_gradient(x["fake"][1]))
    wrong_f, wrong_s = losses.wrong_pairs(real_f, x["sentence"])
    total, parts = losses.discriminator_loss(jax_uncond(p, real_f), jax_cond(p, real_f, x["sentence"]),
                                             jax_uncond(p, fake_f), jax_cond(p, fake_f, x["sentence"]),
                                             jax_cond(p, wrong_f, wrong_s))
    return total, parts

  (total, parts), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(d_params(net))
  err = rel_err(total, ref.item())
  grad_errs = {k: rel_err(grads[k], v.grad.numpy()) for k, v in net.named_parameters()}
  print(f"D loss parity: value rel err {err:.2e}; gradients {max(grad_errs.values()):.2e}")
  assert err <= RTOL_VALUE and max(grad_errs.values()) <= RTOL_GRAD, grad_errs
  # The wrong-pair term is there and is what moves the loss away from the paper's Eq. 5.
  assert parts["wrong_cond"] > 0
  without_wrong = ((parts["real_uncond"] + parts["real_cond"]) / 2
                   + (parts["fake_uncond"] + parts["fake_cond"]) / 3)
  np.testing.assert_allclose(total - without_wrong, parts["wrong_cond"] / 3, rtol=1e-6)


@pytest.mark.parametrize("lam", [5.0, 0.0])
def test_generator_loss_parity_with_damsm_term_and_kl(lam):
  x = make_batch(seed=2)
  nets = [TorchD(8, seed=3), TorchD(16, seed=4)]
  encoder = TorchEncoder()
  cfg = losses.loss_config(lam)
  g = cfg.damsm
  fakes = [nchw(f).requires_grad_(True) for f in x["fake"]]
  mu, logvar = (torch.tensor(x[k], requires_grad=True) for k in ("mu", "logvar"))
  ref_total, ref_parts = reference_generator_loss(
      nets, encoder, fakes, torch.tensor(x["words"]).transpose(1, 2), torch.tensor(x["sentence"]),
      x["lengths"].tolist(), x["class_ids"], gamma1=g.gamma1, gamma2=g.gamma2, gamma3=g.gamma3, lam=lam)
  ref_kl = reference_kl_loss(mu, logvar)
  (ref_total + ref_kl).backward()

  ps = [d_params(n) for n in nets]
  enc = {k: jnp.asarray(v.detach().numpy()) for k, v in encoder.state_dict().items()}

  def loss_fn(fake_images, mu_, logvar_):
    logits = []
    for p, images in zip(ps, fake_images):
      f = jax_features(p, images)
      logits.append((jax_uncond(p, f), jax_cond(p, f, x["sentence"])))
    regions, glob = jax_encoder(enc, fake_images[-1])
    damsm = {"regions": regions, "image_global": glob, "words": x["words"], "sentence": x["sentence"],
             "lengths": x["lengths"], "class_ids": x["class_ids"]}
    return losses.generator_loss(logits, mu_, logvar_, cfg, damsm_inputs=damsm)

  (total, parts), grads = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True))(
      x["fake"], x["mu"], x["logvar"])
  errs = {"total": rel_err(total, (ref_total + ref_kl).item()), "kl": rel_err(parts["kl"], ref_kl.item())}
  errs.update({k: rel_err(parts[k], v.item()) for k, v in ref_parts.items()})
  grad_errs = {f"fake{i}": rel_err(np.transpose(grads[0][i], (0, 3, 1, 2)), fakes[i].grad.numpy())
               for i in range(2)}
  grad_errs.update(mu=rel_err(grads[1], mu.grad.numpy()), logvar=rel_err(grads[2], logvar.grad.numpy()))
  print(f"G loss parity (lambda {lam}): values {max(errs.values()):.2e}, gradients {max(grad_errs.values()):.2e}")
  assert max(errs.values()) <= RTOL_VALUE, errs
  assert max(grad_errs.values()) <= RTOL_GRAD, grad_errs
  adversarial = parts["g_loss0"] + parts["g_loss1"]
  damsm = parts["w_loss0"] + parts["w_loss1"] + parts["s_loss0"] + parts["s_loss1"]
  np.testing.assert_allclose(total, adversarial + lam * damsm + parts["kl"], rtol=1e-6)
  if lam == 0:  # the DAMSM term off: the last stage's images get only the adversarial gradient
    no_damsm, _ = losses.generator_loss([(jnp.zeros(6), jnp.zeros(6))], x["mu"], x["logvar"], cfg)
    np.testing.assert_allclose(no_damsm, 2 * np.log(2.0) + parts["kl"], rtol=1e-6)


def test_kl_loss_parity():
  rng = np.random.default_rng(5)
  mu, logvar = rng.normal(size=(2, 9, 100)).astype(np.float32)
  assert rel_err(losses.kl_loss(mu, logvar), reference_kl_loss(torch.tensor(mu), torch.tensor(logvar)).item()) < 1e-6
  assert float(losses.kl_loss(np.zeros((3, 4)), np.zeros((3, 4)))) == 0.0  # N(0, I) itself


def test_bad_inputs_are_named():
  with pytest.raises(ValueError, match="damsm_lambda=5.0 needs the DAMSM features"):
    losses.generator_loss([(jnp.zeros(2), jnp.zeros(2))], jnp.zeros((2, 3)), jnp.zeros((2, 3)),
                          losses.loss_config(5.0))
  with pytest.raises(ValueError, match="wrong pairs need >= 2"):
    losses.wrong_pairs(jnp.zeros((1, 4)), jnp.zeros((1, 3)))
  with pytest.raises(ValueError, match="at least one stage"):
    losses.generator_loss([], jnp.zeros((2, 3)), jnp.zeros((2, 3)), losses.loss_config(0.0))
