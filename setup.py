"""Installs the three packages of the project: attngan_jax, diffusion_jax and t2i_common."""
from setuptools import find_packages, setup

CORE = [
    "jax>=0.7",
    "flax>=0.10",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11",
    "tensorflow-datasets>=4.9.8",
    "ml-collections>=1.0",
    "numpy>=1.26",
    "pillow>=10",
    "grain>=0.2.12",
    "tqdm>=4.66",
    "tensorboardX>=2.6",
    "tokenizers>=0.15",
    "safetensors>=0.4",
    "scipy>=1.11",
]
TEST = ["pytest>=8", "pytest-xdist>=3.5"]
# torch must be the CPU build on machines without a GPU: install torch first
# (see .ci/run), then this extra, so pip does not pull a CUDA build.
# tensorflow-cpu: reads StackGAN's TF checkpoint of its CUB Inception (attngan_jax.stackgan_inception) and is the
# reference in tests/test_stackgan_inception.py.
PARITY = ["torch>=2.4", "diffusers>=0.30", "transformers>=4.44", "tensorflow-cpu>=2.18"]

setup(
    name="t2i-jax",
    version="0.1.0",
    description="AttnGAN and latent diffusion with Attend-and-Excite in JAX/Flax, for TPU pods and GPUs.",
    python_requires=">=3.10",
    packages=find_packages(include=["attngan_jax*", "diffusion_jax*", "t2i_common*"]),
    install_requires=CORE,
    extras_require={"test": TEST, "parity": PARITY},
)
