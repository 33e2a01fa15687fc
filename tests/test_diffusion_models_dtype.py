"""Reduced-precision compute: parameters stay fp32, outputs are fp32, and bf16/fp16 results stay close to fp32."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_fixtures import FAST_COMPILE, random_variables
from diffusion_jax.model_configs import TextConfig, UNetConfig, VAEConfig
from diffusion_jax.models import AutoencoderKL, CLIPTextTransformer, UNet2DConditionModel, mean_cross_attention

jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)
UNET = UNetConfig(block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), num_heads=(2, 2), layers_per_block=1,
                  cross_attention_dim=16, norm_num_groups=8)


def _rel(a, b) -> float:
  return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_unet_reduced_precision(dtype):
  ref_module, module = UNet2DConditionModel(UNET), UNet2DConditionModel(UNET, dtype=dtype)
  variables = random_variables(ref_module)
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  x, ctx = jax.random.normal(k1, (2, 8, 8, 4)), jax.random.normal(k2, (2, 77, 16))

  @jit
  def run(v):
    ref = ref_module.apply(v, x, 981, ctx)
    out, state = module.apply(v, x, 981, ctx, capture_cross_attn_at=(8,), mutable=["intermediates"])
    return ref, out, mean_cross_attention(state["intermediates"])

  ref, out, maps = run(variables)
  assert out.dtype == jnp.float32 and maps.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(maps).sum(-1), 1.0, atol=1e-3)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  assert _rel(out, ref) < (3e-2 if dtype == jnp.bfloat16 else 5e-3)


def test_vae_and_text_encoder_bf16():
  vae_cfg = VAEConfig(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8)
  text_cfg = TextConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                        num_attention_heads=2, eos_token_id=49)
  vae32, vae16 = AutoencoderKL(vae_cfg), AutoencoderKL(vae_cfg, dtype=jnp.bfloat16)
  text32, text16 = CLIPTextTransformer(text_cfg), CLIPTextTransformer(text_cfg, dtype=jnp.bfloat16)
  vae_vars, text_vars = random_variables(vae32, 1), random_variables(text32, 2)
  img = jax.random.uniform(jax.random.PRNGKey(3), (1, 16, 16, 3), minval=-1, maxval=1)
  ids = jnp.array([[0, 5, 7, 49, 49, 49]])

  @jit
  def run(vv, tv):
    return [m.apply(vv, img) for m in (vae32, vae16)] + [m.apply(tv, ids)["last_hidden_state"]
                                                        for m in (text32, text16)]

  v32, v16, t32, t16 = run(vae_vars, text_vars)
  assert v16.dtype == jnp.float32 and t16.dtype == jnp.float32
  # bf16 keeps 8 bits of mantissa: through the VAE's encoder and decoder the relative error measured 2.5-3.4 %
  # (by XLA's optimisation level); a dtype mistake gives errors of order 1.
  assert _rel(v16, v32) < 5e-2 and _rel(t16, t32) < 3e-2
