"""The optional patch discriminator of VAE training (PatchGAN layout as in latent-diffusion's VAE)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class PatchDiscriminator(nn.Module):
  """Conv(4, s2) + LeakyReLU, then `num_layers - 1` x [Conv(4, s2), GroupNorm, LeakyReLU], then a 1-channel
  conv: one real/fake logit per receptive-field patch. GroupNorm rather than BatchNorm keeps the step free of
  mutable batch statistics (one optimizer state, no cross-device statistics)."""
  channels: int = 64
  num_layers: int = 3

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = nn.Conv(self.channels, (4, 4), strides=2, padding=1, name="conv_in")(images)
    x = nn.leaky_relu(x, 0.2)
    for i in range(1, self.num_layers):
      ch = self.channels * min(2**i, 8)
      x = nn.Conv(ch, (4, 4), strides=2 if i < self.num_layers - 1 else 1, padding=1, use_bias=False,
                  name=f"conv_{i}")(x)
      x = nn.GroupNorm(num_groups=min(32, ch // 4), name=f"norm_{i}")(x)
      x = nn.leaky_relu(x, 0.2)
    return nn.Conv(1, (4, 4), padding=1, name="conv_out")(x).astype(jnp.float32)
