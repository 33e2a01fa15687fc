"""Parity of the AttnGAN generator and discriminators with the reference's PyTorch code, and the netG/netD import.

The PyTorch side is tests/helpers/attngan_torch.py (the reference G_NET / D_NET64 / D_NET128 / D_NET256 in
current PyTorch, incl. the attention-mask tiling). Random orthogonal weights as the reference's weights_init and
random BatchNorm statistics; the state dicts are written with torch.save and read by our converter
(attngan_jax.convert_torch), so the test covers the file format too. Small widths (gf = df = 4) at the
reference's base size 64 and 3 stages (64 / 128 / 256 px), and the generator at base size 16 (the shapes configs'
kind, which the reference does not have). Tolerance: relative error
(max |ours - torch| / max |torch|) <= 1e-4 in fp32.
"""
import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need PyTorch (the 'parity' extra)")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from attngan_jax import convert_torch  # noqa: E402
from attngan_jax.gan.config import gan_model_config  # noqa: E402
from helpers import attngan_torch as ref  # noqa: E402
from t2i_common.parallel import CPU_FAST_COMPILE  # noqa: E402
from t2i_common.weights import WeightMismatchError  # noqa: E402

RTOL = 1e-4
jit = functools.partial(jax.jit, compiler_options=CPU_FAST_COMPILE)
SIZES = dict(gf_dim=4, df_dim=4, r_num=2, branch_num=3, z_dim=16, condition_dim=8, embedding_dim=12)
B, T = 3, 7
LENGTHS = (7, 3, 1)  # short captions: the mask modes differ


def rel_err(ours, theirs) -> float:
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  return float(np.max(np.abs(ours - theirs)) / max(np.max(np.abs(theirs)), 1e-12))


def nhwc(t) -> np.ndarray:
  return t.detach().numpy().transpose(0, 2, 3, 1)


def torch_inputs(seed=0):
  g = torch.Generator().manual_seed(seed)
  z = torch.randn(B, SIZES["z_dim"], generator=g)
  sent = torch.randn(B, SIZES["embedding_dim"], generator=g)
  words = torch.randn(B, SIZES["embedding_dim"], T, generator=g)  # the reference layout B x D x T
  eps = torch.randn(B, SIZES["condition_dim"], generator=g)
  mask = torch.arange(T)[None, :] >= torch.tensor(LENGTHS)[:, None]
  return z, sent, words, mask, eps


def jax_inputs(z, sent, words, mask, eps):
  j = lambda t: jnp.asarray(t.numpy())  # noqa: E731
  return j(z), j(sent), jnp.swapaxes(j(words), 1, 2), j(mask), j(eps)


def set_mask_bug(net, on: bool) -> None:
  for m in net.modules():
    if isinstance(m, ref.GlobalAttentionGeneral):
      m.mask_bug = on


@pytest.fixture(scope="module")
def torch_g(tmp_path_factory):
  torch.manual_seed(0)
  net = ref.G_NET(ref.TorchGanConfig(**SIZES))
  net.apply(ref.weights_init)
  with torch.no_grad():
    ref.randomize_batchnorm(net, torch.Generator().manual_seed(1))
  path = str(tmp_path_factory.mktemp("netg") / "netG_epoch_600.pth")
  torch.save(net.state_dict(), path)
  return net, path


def model_config(base_size=64, **kw):
  return gan_model_config(**SIZES, base_size=base_size, **kw)


@pytest.mark.parametrize("mask_bug", [False, True])
def test_generator_parity_eval(torch_g, mask_bug):
  net, path = torch_g
  set_mask_bug(net, mask_bug)
  net.eval()
  z, sent, words, mask, eps = torch_inputs()
  with torch.no_grad():
    images, maps, mu, logvar = net(z, sent, words, mask, eps)
  gen, variables = convert_torch.load_generator(path, model_config(reference_mask_bug=mask_bug))
  ours = jit(gen.apply)(variables, *jax_inputs(z, sent, words, mask, eps)[:4], ca_noise=jax_inputs(
      z, sent, words, mask, eps)[4])
  errors = [rel_err(a, nhwc(b)) for a, b in zip(ours[0], images)]
  errors += [rel_err(a, b.numpy()) for a, b in zip(ours[1], maps)]
  errors += [rel_err(ours[2], mu.numpy()), rel_err(ours[3], logvar.numpy())]
  print(f"generator eval, reference_mask_bug={mask_bug}: rel errors {['%.1e' % e for e in errors]}")
  assert [a.shape for a in ours[0]] == [(B, 64, 64, 3), (B, 128, 128, 3), (B, 256, 256, 3)]
  assert [a.shape for a in ours[1]] == [(B, T, 64, 64), (B, T, 128, 128)]
  assert max(errors) <= RTOL
  # the reference's two mask modes do differ on these captions (so the parity above tells them apart)
  set_mask_bug(net, not mask_bug)
  with torch.no_grad():
    other = net(z, sent, words, mask, eps)[0][-1]
  assert rel_err(other.numpy(), images[-1].numpy()) > 1e-3


def test_generator_parity_small_base_size(tmp_path):
  """base_size 16 (the shapes configs' kind; the reference has only 64): the re-expression's generalisation, which
  benchmarks/attngan_train_vs_torch.py runs, computes what attngan_jax's does."""
  torch.manual_seed(1)
  net = ref.G_NET(ref.TorchGanConfig(**SIZES, base_size=16, mask_bug=False))
  net.apply(ref.weights_init)
  with torch.no_grad():
    ref.randomize_batchnorm(net, torch.Generator().manual_seed(1))
  net.eval()
  path = str(tmp_path / "netG.pth")
  torch.save(net.state_dict(), path)
  inputs = torch_inputs()
  with torch.no_grad():
    images, maps, _, _ = net(*inputs)
  gen, variables = convert_torch.load_generator(path, model_config(base_size=16, reference_mask_bug=False))
  z, sent, words, mask, eps = jax_inputs(*inputs)
  ours = jit(gen.apply)(variables, z, sent, words, mask, ca_noise=eps)
  errors = [rel_err(a, nhwc(b)) for a, b in zip(ours[0], images)] + [rel_err(a, b.numpy())
                                                                    for a, b in zip(ours[1], maps)]
  print(f"generator eval, base size 16: rel errors {['%.1e' % e for e in errors]}")
  assert [a.shape for a in ours[0]] == [(B, 16, 16, 3), (B, 32, 32, 3), (B, 64, 64, 3)]
  assert max(errors) <= RTOL


def test_generator_parity_train_mode(torch_g):
  """Train mode: batch statistics in every BatchNorm and PyTorch's running-statistics update."""
  net, path = torch_g
  set_mask_bug(net, True)
  net_train = ref.G_NET(ref.TorchGanConfig(**SIZES))
  net_train.load_state_dict(net.state_dict())
  net_train.train()
  z, sent, words, mask, eps = torch_inputs(1)
  with torch.no_grad():
    images, maps, _, _ = net_train(z, sent, words, mask, eps)
  gen, variables = convert_torch.load_generator(path, model_config(reference_mask_bug=True))
  zj, sj, wj, mj, ej = jax_inputs(z, sent, words, mask, eps)
  (ours, updates) = jit(functools.partial(gen.apply, train=True, mutable=["batch_stats"]))(
      variables, zj, sj, wj, mj, ca_noise=ej)
  errors = [rel_err(a, nhwc(b)) for a, b in zip(ours[0], images)] + [rel_err(a, b.numpy())
                                                                    for a, b in zip(ours[1], maps)]
  state = net_train.state_dict()
  stats = jax.tree_util.tree_leaves_with_path(updates["batch_stats"])
  stat_errors = []
  for torch_name in state:
    if not torch_name.endswith(("running_mean", "running_var")):
      continue
    mapped = convert_torch.gan_names.table_rename(convert_torch.gan_names.GENERATOR_TABLE)(
        torch_name, state[torch_name].numpy())
    leaf = [x for p, x in stats if tuple(k.key for k in p) == mapped[0][1:]]
    stat_errors.append(rel_err(leaf[0], mapped[1]))
  print(f"generator train: outputs {max(errors):.1e}, running statistics ({len(stat_errors)}) {max(stat_errors):.1e}")
  assert len(stat_errors) == len(stats)
  assert max(errors) <= RTOL and max(stat_errors) <= RTOL


@pytest.mark.parametrize("size", [64, 128, 256])
def test_discriminator_parity(size, tmp_path):
  torch.manual_seed(size)
  cfg = ref.TorchGanConfig(**SIZES)
  net = ref.D_NETS[size](cfg)
  net.apply(ref.weights_init)
  with torch.no_grad():
    ref.randomize_batchnorm(net, torch.Generator().manual_seed(2))
  path = str(tmp_path / f"netD{size}.pth")
  torch.save(net.state_dict(), path)
  g = torch.Generator().manual_seed(3)
  images = torch.rand(B, 3, size, size, generator=g) * 2 - 1
  sent = torch.randn(B, SIZES["embedding_dim"], generator=g)
  disc, variables = convert_torch.load_discriminator(path, model_config())
  assert disc.image_size == size
  images_j, sent_j = jnp.asarray(images.numpy().transpose(0, 2, 3, 1)), jnp.asarray(sent.numpy())

  for train in (False, True):
    net.train(train)
    with torch.no_grad():
      feats = net(images)
      uncond, cond = net.UNCOND_DNET.logits(feats), net.COND_DNET.logits(feats, sent)
      cond_prob = net.COND_DNET(feats, sent) if not train else None
    fn = functools.partial(disc.apply, train=train, mutable=["batch_stats"] if train else False)
    out = jit(fn)(variables, images_j, sent_j)
    f_j, u_j, c_j = out[0] if train else out
    errors = [rel_err(f_j, nhwc(feats)), rel_err(u_j, uncond.numpy()), rel_err(c_j, cond.numpy())]
    if not train:
      errors.append(rel_err(jax.nn.sigmoid(c_j), cond_prob.numpy()))  # the reference's output = sigmoid(logits)
    else:  # running statistics after one train-mode forward, e.g. the joint conv's
      errors.append(rel_err(out[1]["batch_stats"]["cond_dnet"]["joint_conv"]["bn"]["var"],
                            net.COND_DNET.jointConv[1].running_var.numpy()))
    print(f"D{size} train={train}: rel errors {['%.1e' % e for e in errors]}")
    assert max(errors) <= RTOL


def test_converter_cli_and_strict_errors(torch_g, tmp_path, capsys):
  net, path = torch_g
  out = str(tmp_path / "g")
  convert_torch.main(["--kind", "generator", "--src", path, "--out", out])
  assert '"gf_dim": 4' in capsys.readouterr().out
  cfg = model_config(reference_mask_bug=True)
  gen, from_dir = convert_torch.load_generator(out, cfg)
  _, from_pth = convert_torch.load_generator(path, cfg)
  jax.tree_util.tree_map(np.testing.assert_array_equal, from_dir, from_pth)
  assert gen.reference_mask_bug

  # a config of other sizes: the error says what the file was built with
  with pytest.raises(ValueError, match=r"(?s)gf_dim: file 4, config 8.*looks like: gf_dim=4.*--config.model.gf_dim=4"):
    convert_torch.load_generator(path, gan_model_config(**dict(SIZES, gf_dim=8)))
  with pytest.raises(ValueError, match="branch_num: file 3, config 2"):
    convert_torch.load_generator(out, gan_model_config(**dict(SIZES, branch_num=2)))

  # missing, unexpected and mis-shaped tensors are listed by name
  state = {k: v.clone() for k, v in net.state_dict().items()}
  del state["h_net2.residual.1.block.3.weight"]
  state["h_net3.extra.weight"] = torch.zeros(3)
  state["h_net2.att.conv_context.weight"] = torch.zeros(4, 5, 1, 1)
  bad = str(tmp_path / "bad.pth")
  torch.save(state, bad)
  with pytest.raises(WeightMismatchError) as info:
    convert_torch.load_generator(bad, cfg)
  assert info.value.missing == ["params/h_net2/residual_1/conv2/kernel"]
  assert info.value.unexpected == ["h_net3.extra.weight"]
  assert [m.split(":")[0] for m in info.value.misshaped] == ["h_net2.att.conv_context.weight"]

  # discriminators: CLI, directory round trip, a size the config's generator does not make
  d_net = ref.D_NET128(ref.TorchGanConfig(**SIZES))
  d_path = str(tmp_path / "netD1.pth")
  torch.save(d_net.state_dict(), d_path)
  convert_torch.main(["--kind", "discriminator", "--src", d_path, "--out", str(tmp_path / "d")])
  disc, d_vars = convert_torch.load_discriminator(str(tmp_path / "d"), cfg)
  assert disc.image_size == 128 and d_vars["params"]["down_0"]["conv"]["kernel"].shape == (4, 4, 32, 64)
  with pytest.raises(ValueError, match="for 128 px images"):
    convert_torch.load_discriminator(d_path, gan_model_config(**dict(SIZES, base_size=16)))
  with pytest.raises(ValueError, match="not an AttnGAN generator"):
    convert_torch.load_generator(d_path, cfg)


def test_birds_netg_with_the_coco_config_names_the_birds_preset(tmp_path):
  net = ref.G_NET(ref.TorchGanConfig())  # the birds sizes: gf 32, r_num 2, 3 branches
  path = str(tmp_path / "netG_birds.pth")
  torch.save(net.state_dict(), path)
  with pytest.raises(ValueError, match=r"(?s)gf_dim: file 32, config 48.*r_num: file 2, config 3.*the birds preset"):
    convert_torch.load_generator(path, gan_model_config("coco"))
