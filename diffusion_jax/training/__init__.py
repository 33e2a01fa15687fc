"""Training of the latent-diffusion components: the VAE (vae_trainer) and the UNet with its text encoder on
VAE latents (ldm_trainer); losses in objectives.py, the optional patch discriminator in discriminator.py.
Entry point: `python -m diffusion_jax.train --config configs/diffusion/<name>.py --workdir W`."""
