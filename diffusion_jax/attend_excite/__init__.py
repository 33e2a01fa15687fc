"""Attend-and-Excite (Chefer et al., SIGGRAPH 2023) inside the one-jit sampler: `Pipeline(..., token_indices=...)`.

loss.py: the loss on captured cross-attention maps; update.py: the per-step latent update and the iterative
refinement (jax.grad, lax.while_loop), batched; indices.py: token indices from words and the argument checks;
pictures.py: attention-map grids.
"""
from diffusion_jax.attend_excite.indices import get_indices, subject_indices
from diffusion_jax.attend_excite.loss import gaussian_kernel, max_attention_per_token, smooth, subject_loss
from diffusion_jax.attend_excite.update import AttendExciteInputs, AttendExciteSettings, make_latent_update

__all__ = ["get_indices", "subject_indices", "gaussian_kernel", "max_attention_per_token", "smooth",
           "subject_loss", "AttendExciteInputs", "AttendExciteSettings", "make_latent_update"]
