"""fsq-jax: Finite Scalar Quantization and VQ tokenizers in JAX/Flax.

The shared library behind the MaskGIT and UViM pipelines: quantizers, codebook metrics, data,
evaluation and the one training loop every task runs on.
"""

__version__ = "0.2.0"
