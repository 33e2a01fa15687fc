"""Latent diffusion (Stable Diffusion 1.x/2.x architectures) in JAX/Flax: models, schedulers, sampling pipeline.

    import diffusion_jax
    pipe = diffusion_jax.from_pretrained("path/to/sd-folder", dtype="bfloat16")
    images = pipe("a photo of a cat", seeds=[0, 1])
"""


def __getattr__(name):
  # Imported on first use so that `import diffusion_jax.models` does not pull in the whole pipeline.
  if name in ("from_pretrained", "Pipeline"):
    from diffusion_jax import pipeline
    return getattr(pipeline, name)
  raise AttributeError(f"module 'diffusion_jax' has no attribute {name!r}")


__all__ = ["from_pretrained", "Pipeline"]
