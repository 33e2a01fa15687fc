"""The presets (sd1, sd2-base, sd2-v) are the released Stable Diffusion architectures, and full-size single
files in the original layout map onto them strictly.

The parameter counts are the published ones of the released models (SD 1.x UNet 859,520,964; SD 2.x UNet
865,910,724; the VAE 83,653,863; CLIP ViT-L/14 text 123,060,480; OpenCLIP ViT-H text without its last block
340,387,840). The full-size checkpoints are shape-only: diffusers/transformers modules built on torch's meta
device, renamed to the original layout, and read as zero-copy numpy views, so no gigabytes are allocated.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the shape-only checkpoints come from PyTorch modules")
diffusers = pytest.importorskip("diffusers", reason="the full-size modules are diffusers'")
transformers = pytest.importorskip("transformers", reason="the full-size text encoders are transformers'")

import jax  # noqa: E402

from diffusion_fixtures import original_layout_state  # noqa: E402
from diffusion_jax.convert import abstract_variables  # noqa: E402
from diffusion_jax.model_configs import PRESETS, preset  # noqa: E402
from diffusion_jax.models.clip_text import CLIPTextTransformer  # noqa: E402
from diffusion_jax.models.unet import UNet2DConditionModel  # noqa: E402
from diffusion_jax.models.vae import AutoencoderKL  # noqa: E402
from diffusion_jax.single_file import convert_checkpoint  # noqa: E402

PUBLISHED = {"sd1": (859_520_964, 83_653_863, 123_060_480), "sd2-base": (865_910_724, 83_653_863, 340_387_840)}


def _count(module) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(abstract_variables(module)))


@pytest.mark.parametrize("name", ["sd1", "sd2-base"])
def test_preset_is_the_released_architecture_and_reads_its_single_file(name):
  p = preset(name)
  ours = (UNet2DConditionModel(p.unet), AutoencoderKL(p.vae), CLIPTextTransformer(p.text))
  assert tuple(_count(m) for m in ours) == PUBLISHED[name]
  with torch.device("meta"):
    unet = diffusers.UNet2DConditionModel.from_config(p.unet.to_diffusers())
    vae = diffusers.AutoencoderKL.from_config(p.vae.to_diffusers())
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(**p.text.to_transformers()))
  state = original_layout_state(unet, vae, text, openclip=p.pad_token == "!")
  zero = np.zeros((), np.float32)
  views = {k: np.broadcast_to(zero, tuple(v.shape)) for k, v in state.items()}
  if name == "sd2-base":  # the released OpenCLIP tower has 24 blocks; SD 2.x uses 23 (the penultimate output)
    assert any(k.startswith("cond_stage_model.model.transformer.resblocks.23.") for k in views)
  params = convert_checkpoint(views, *ours, source=f"a shape-only {name} checkpoint")
  assert sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params)) == sum(PUBLISHED[name])


def test_sd2_v_differs_from_sd2_base_only_in_resolution_and_prediction():
  base, v = preset("sd2-base"), preset("sd2-v")
  assert v.unet.sample_size * 8 == 768 and base.unet.sample_size * 8 == 512
  assert v.scheduler["prediction_type"] == "v_prediction" and base.scheduler["prediction_type"] == "epsilon"
  assert v.text == base.text and v.pad_token == base.pad_token == "!"
  assert set(PRESETS) == {"sd1", "sd2-base", "sd2-v"} and PRESETS["sd1"].pad_token == "<|endoftext|>"
