"""Model configs from diffusers/transformers config.json: full-size parameter counts, round trips, and clear
errors for options the models do not implement. No PyTorch needed."""
import json

import numpy as np
import pytest
from flax import traverse_util

from diffusion_jax.convert import abstract_variables, weight_files
from diffusion_jax.model_configs import (TextConfig, UNetConfig, UnsupportedConfigError, VAEConfig, text_config,
                                         unet_config)
from diffusion_jax.models import AutoencoderKL, CLIPTextTransformer, UNet2DConditionModel

# The unet/config.json of Stable Diffusion 1.5 and 2.1 (768 px), as published in their diffusers folders.
SD15_UNET = {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
             "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False,
             "cross_attention_dim": 768, "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                                              "CrossAttnDownBlock2D", "DownBlock2D"],
             "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
             "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
             "out_channels": 4, "sample_size": 64,
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}
SD21_UNET = dict(SD15_UNET, attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024, sample_size=96,
                 use_linear_projection=True, upcast_attention=True, dual_cross_attention=False,
                 num_class_embeds=None, only_cross_attention=False, resnet_time_scale_shift="default")


def _count(module) -> int:
  return sum(int(np.prod(x.shape)) for x in traverse_util.flatten_dict(abstract_variables(module)).values())


def test_full_size_parameter_counts():
  assert _count(UNet2DConditionModel(UNetConfig.from_diffusers(SD15_UNET))) == 859_520_964
  assert _count(UNet2DConditionModel(UNetConfig.from_diffusers(SD21_UNET))) == 865_910_724
  assert _count(AutoencoderKL(VAEConfig())) == 83_653_863
  assert _count(CLIPTextTransformer(TextConfig())) == 123_060_480  # CLIP ViT-L/14 text tower (SD 1.x)


def test_heads_per_block_and_round_trip():
  sd15, sd21 = UNetConfig.from_diffusers(SD15_UNET), UNetConfig.from_diffusers(SD21_UNET)
  assert sd15.num_heads == (8, 8, 8, 8)  # diffusers reads the int attention_head_dim as the number of heads
  assert sd21.num_heads == (5, 10, 20, 20) and sd21.use_linear_projection and sd21.upcast_attention
  for cfg in (sd15, sd21):
    assert UNetConfig.from_diffusers(json.loads(json.dumps(cfg.to_diffusers()))) == cfg
  assert sd15.to_diffusers()["attention_head_dim"] == 8
  vae = VAEConfig()
  assert VAEConfig.from_diffusers(vae.to_diffusers()) == vae
  text = TextConfig(hidden_act="gelu", num_hidden_layers=23, hidden_size=1024, num_attention_heads=16)
  assert TextConfig.from_transformers(text.to_transformers()) == text


@pytest.mark.parametrize("key,value", [("class_embed_type", "timestep"), ("addition_embed_type", "text_time"),
                                       ("transformer_layers_per_block", 2), ("resnet_time_scale_shift",
                                                                             "spatial"),
                                       ("down_block_types", ["SimpleCrossAttnDownBlock2D"] * 4),
                                       ("layers_per_block", [2, 2, 2, 2])])
def test_unsupported_unet_options_are_named(key, value):
  with pytest.raises(UnsupportedConfigError, match=key.split("_")[0]):
    UNetConfig.from_diffusers(dict(SD15_UNET, **{key: value}))


def test_other_config_errors(tmp_path):
  with pytest.raises(UnsupportedConfigError, match="latents_mean"):
    VAEConfig.from_diffusers({"_class_name": "AutoencoderKL", "latents_mean": [0.0] * 4})
  with pytest.raises(UnsupportedConfigError, match="UNet2DConditionModel"):
    UNetConfig.from_diffusers({"_class_name": "UNet2DModel"})
  with pytest.raises(UnsupportedConfigError, match="hidden_act"):
    TextConfig(hidden_act="swish")
  with pytest.raises(UnsupportedConfigError, match="CLIPTextModel"):
    TextConfig.from_transformers({"model_type": "clip_text_model", "architectures": ["CLIPTextModelWithProjection"]})
  with pytest.raises(UnsupportedConfigError, match="divisible"):
    UNetConfig.from_diffusers(dict(SD15_UNET, attention_head_dim=7))
  with pytest.raises(FileNotFoundError, match="config.json"):
    unet_config(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip_text_model"}))
  assert text_config(str(tmp_path)).hidden_size == 768
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    weight_files(str(tmp_path), ("model",))


def test_bad_inputs_raise_clear_errors():
  import jax
  import jax.numpy as jnp
  cfg = UNetConfig(block_out_channels=(32, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), num_heads=(2, 2), layers_per_block=1,
                   cross_attention_dim=16, norm_num_groups=8)
  unet = UNet2DConditionModel(cfg)
  with pytest.raises(ValueError, match="NHWC"):
    jax.eval_shape(lambda: unet.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 8, 8)), 1, jnp.zeros((1, 3, 16))))
  with pytest.raises(ValueError, match="cross_attention_dim"):
    jax.eval_shape(lambda: unet.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 4)), 1, jnp.zeros((1, 3, 8))))
  text = CLIPTextTransformer(TextConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2, vocab_size=10))
  with pytest.raises(ValueError, match="77"):
    jax.eval_shape(lambda: text.init(jax.random.PRNGKey(0), jnp.zeros((1, 78), jnp.int32)))
