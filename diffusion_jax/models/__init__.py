"""Flax models of Stable-Diffusion-style latent diffusion: UNet, KL autoencoder, CLIP text encoder."""
from diffusion_jax.models.attention import cross_attention_maps, mean_cross_attention
from diffusion_jax.models.clip_text import CLIPTextTransformer
from diffusion_jax.models.unet import UNet2DConditionModel, unet_apply_nchw
from diffusion_jax.models.vae import AutoencoderKL, DiagonalGaussian

__all__ = ["AutoencoderKL", "CLIPTextTransformer", "DiagonalGaussian", "UNet2DConditionModel",
           "cross_attention_maps", "mean_cross_attention", "unet_apply_nchw"]
