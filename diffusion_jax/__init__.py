"""Latent diffusion (Stable Diffusion 1.x/2.x architectures) in JAX/Flax: models, schedulers, sampling pipeline.

    import diffusion_jax
    pipe = diffusion_jax.from_pretrained("path/to/sd-folder", dtype="bfloat16")
    pipe = diffusion_jax.from_single_file("v1-5-pruned-emaonly.safetensors", config="sd1")
    images = pipe("a photo of a cat", seeds=[0, 1])
"""


def __getattr__(name):
  # Imported on first use so that `import diffusion_jax.models` does not pull in the whole pipeline.
  if name in ("from_pretrained", "Pipeline"):
    from diffusion_jax import pipeline
    return getattr(pipeline, name)
  if name == "from_single_file":
    from diffusion_jax import single_file
    return single_file.from_single_file
  raise AttributeError(f"module 'diffusion_jax' has no attribute {name!r}")


__all__ = ["from_pretrained", "from_single_file", "Pipeline"]
