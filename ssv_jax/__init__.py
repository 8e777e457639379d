"""ssv_jax: self-supervised speaker verification in JAX/Flax."""

__version__ = "0.1.0"
