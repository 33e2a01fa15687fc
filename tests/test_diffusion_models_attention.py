"""Cross-attention map capture (for Attend-and-Excite): shapes, normalisation, equality with the probabilities
inside diffusers' attention, an unchanged fast path, and gradients w.r.t. the latents (with and without remat)."""
import functools
import os
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the reference maps come from diffusers (PyTorch)")
diffusers = pytest.importorskip("diffusers", reason="the reference maps come from diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from diffusion_fixtures import FAST_COMPILE, random_variables, tiny_sd1  # noqa: E402,F401
from diffusion_jax import convert  # noqa: E402
from diffusion_jax.model_configs import UNetConfig  # noqa: E402
from diffusion_jax.models import UNet2DConditionModel, cross_attention_maps, mean_cross_attention  # noqa: E402

jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)


class RecordingProcessor:
  """Plain (non-fused) attention that keeps the cross-attention probabilities, like Attend-and-Excite's."""

  def __init__(self, store: dict, name: str):
    self.store, self.name = store, name

  def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
    cross = encoder_hidden_states is not None
    ctx = encoder_hidden_states if cross else hidden_states
    q, k, v = (attn.head_to_batch_dim(f(x)) for f, x in ((attn.to_q, hidden_states), (attn.to_k, ctx),
                                                          (attn.to_v, ctx)))
    probs = attn.get_attention_scores(q, k, None)
    if cross:
      b = hidden_states.shape[0]
      self.store[self.name] = probs.reshape(b, attn.heads, *probs.shape[1:]).detach().numpy()
    out = attn.batch_to_head_dim(torch.bmm(probs, v))
    return attn.to_out[1](attn.to_out[0](out))


@pytest.fixture(scope="module")
def setup(tiny_sd1):
  folder = os.path.join(tiny_sd1, "unet")
  ref = diffusers.UNet2DConditionModel.from_pretrained(folder).eval()
  store: dict = {}
  ref.set_attn_processor({name: RecordingProcessor(store, name.replace(".processor", ""))
                          for name in ref.attn_processors})
  module, variables = convert.load_unet(folder)
  rng = np.random.default_rng(0)
  latents = rng.standard_normal((2, 16, 16, 4)).astype(np.float32)
  ctx = rng.standard_normal((2, 77, module.config.cross_attention_dim)).astype(np.float32)
  t = np.array([500, 500])
  with torch.no_grad():
    ref_out = ref(torch.from_numpy(latents.transpose(0, 3, 1, 2)), torch.from_numpy(t),
                  torch.from_numpy(ctx)).sample.numpy().transpose(0, 2, 3, 1)
  return module, variables, latents, ctx, t, store, ref_out


def test_captured_maps_match_diffusers_probabilities(setup):
  module, variables, latents, ctx, t, store, ref_out = setup

  @jit
  def run(v, x):
    plain = module.apply(v, x, t, ctx)
    out, state = module.apply(v, x, t, ctx, capture_cross_attn_at=(8,), mutable=["intermediates"])
    return plain, out, state["intermediates"]

  plain, out, inter = run(variables, latents)
  maps = cross_attention_maps(inter)
  heads = module.config.num_heads[1]
  # 16x16 latents: the 8x8 cross-attention layers are down_blocks.1 (2 layers) and up_blocks.1 (3 layers)
  expected = {f"down_blocks_1/attentions_{i}/transformer_blocks_0/attn2" for i in range(2)}
  expected |= {f"up_blocks_1/attentions_{i}/transformer_blocks_0/attn2" for i in range(3)}
  assert set(maps) == expected
  for path, probs in maps.items():
    assert probs.shape == (2, heads, 64, 77) and probs.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, atol=1e-5)
    torch_name = re.sub(r"_(\d+)(?=/|$)", r".\1", path).replace("/", ".")
    np.testing.assert_allclose(np.asarray(probs), store[torch_name], atol=1e-5, err_msg=path)
  # capturing does not change the prediction, and both paths match diffusers
  np.testing.assert_allclose(np.asarray(out), np.asarray(plain), atol=1e-5)
  np.testing.assert_allclose(np.asarray(plain), ref_out, atol=1e-4)
  mean = mean_cross_attention(inter)
  assert mean.shape == (2, 64, 77)
  np.testing.assert_allclose(np.asarray(mean), np.mean([store[k] for k in store
                                                        if ".1.attentions" in k and "attn2" in k], axis=(0, 2)),
                             atol=1e-5)


def test_uncaptured_call_sows_nothing(setup):
  module, variables, latents, ctx, t, *_ = setup
  _, state = jax.eval_shape(lambda v: module.apply(v, latents, t, ctx, capture_cross_attn_at=(5,),
                                                   mutable=["intermediates"]), variables)
  assert not cross_attention_maps(state.get("intermediates", {}))
  with pytest.raises(ValueError, match="capture_cross_attn_at"):
    mean_cross_attention({})


def test_gradient_of_attention_loss_wrt_latents():
  """An Attend-and-Excite-style loss on the captured maps has finite, non-zero latent gradients; remat
  (activation recomputation for training) gives the same gradients. A smaller UNet than the folder's keeps the
  backward compile short."""
  cfg = UNetConfig(block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), num_heads=(2, 2), layers_per_block=1,
                   cross_attention_dim=16, norm_num_groups=8, sample_size=8)
  module, remat_module = UNet2DConditionModel(cfg), UNet2DConditionModel(cfg, remat=True)
  variables = random_variables(module)
  k1, k2 = jax.random.split(jax.random.PRNGKey(1))
  latents, ctx, t = jax.random.normal(k1, (2, 8, 8, 4)), jax.random.normal(k2, (2, 77, 16)), jnp.array([500, 20])

  def loss(x, m):
    _, state = m.apply(variables, x, t, ctx, capture_cross_attn_at=(8,), mutable=["intermediates"])
    maps = mean_cross_attention(state["intermediates"])[:, :, 1:-1]  # drop <|startoftext|> and the last token
    maps = jax.nn.softmax(100.0 * maps, axis=-1)
    return jnp.sum(1.0 - maps[:, :, 1].max(axis=1))  # token index 2 of the prompt after the shift

  grads = jit(lambda x: (jax.grad(loss)(x, module), jax.grad(loss)(x, remat_module)))(latents)
  g, g_remat = map(np.asarray, grads)
  assert g.shape == latents.shape and np.all(np.isfinite(g)) and np.abs(g).max() > 0
  np.testing.assert_allclose(g_remat, g, rtol=1e-4, atol=1e-5 * np.abs(g).max())
