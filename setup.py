"""ssv_jax: self-supervised speaker verification in JAX/Flax."""

from setuptools import find_packages, setup

# Pinned: these versions were resolved together and tested.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorflow-cpu==2.21.0",
    "tensorflow-datasets==4.9.10",
    "grain==0.2.18",  # the training input pipeline's worker processes
    "numpy==2.4.6",
    "ml-collections==1.1.0",
    "clu==0.0.12",
    "librosa==0.11.0",
    "soundfile==0.14.0",
    "av==18.1.0",  # m4a/AAC decoding (VoxCeleb2)
    "absl-py==2.5.1",
    "matplotlib==3.11.2",
    "tqdm==4.70.1",
    "tensorboard==2.21.0",  # clu writes TensorBoard event files through it
]

# One extra per accelerator: `pip install -e '.[cpu]'`, `'.[cuda]'` (NVIDIA GPU, CUDA 13
# wheels, driver >= 580) or `'.[tpu]'` (TPU VM).
_LINUX_X86 = 'platform_system == "Linux" and platform_machine == "x86_64"'
EXTRAS = {
    # oneDNN convolution kernels for the CPU backend (ssv_jax/kernels): library and headers.
    "cpu": [
        f"onednn-cpu-gomp==2023.2.0; {_LINUX_X86}",
        f"onednn-devel-cpu-gomp==2023.2.0; {_LINUX_X86}",
    ],
    "cuda": ["jax[cuda13]==0.10.2"],
    "tpu": ["jax[tpu]==0.10.2"],
    # scikit-learn is the independent reference in tests and benchmarks; ruff lints and formats.
    "test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "scikit-learn==1.9.1", "ruff==0.17.6"],
}

setup(
    name="ssv_jax",
    version="0.1.0",
    description="Self-supervised speaker verification (SimCLR/MoCo with NT-Xent-AM) in JAX/Flax",
    packages=find_packages(include=["ssv_jax", "ssv_jax.*"]),
    package_data={"ssv_jax.kernels": ["*.cc"]},
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    entry_points={"console_scripts": ["ssv-jax=ssv_jax.cli:main"]},
    extras_require=EXTRAS,
)
