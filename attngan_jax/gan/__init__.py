"""AttnGAN's attentional generator and stage discriminators (Flax linen, channels-last).

Modules: blocks (GLU, upBlock, ResBlock, PyTorch-exact BatchNorm, conv helpers), attention (word attention,
Eq. 2, with the reference's mask bug as an option), generator (CA_NET, the stages, Generator), discriminator
(D64 / D128 / D256 and smaller), config (the `model` config section), torch_weights (the reference's tensor
names and the architecture a netG / netD file implies). Weights of the reference's netG / netD files:
attngan_jax.convert_torch (load_generator, load_discriminator, `--kind generator|discriminator`).
"""
