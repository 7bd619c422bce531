"""A quantizer between two learned projections: `Projected(FSQ(levels), dim)` takes and returns
vectors of width `dim`, as vector-quantize-pytorch's `FSQ(levels, dim=dim)` does.

The quantizers themselves stay what the paper defines (FSQ sees `len(levels)` channels); models
that want the projections built in, rather than writing their own (MaskGIT's tokenizer and UViM's
stage I have theirs), wrap any quantizer in this module. Like vector-quantize-pytorch
(finite_scalar_quantization.py: project_in / project_out are nn.Linear with bias), both
projections are dense layers with a bias; the indices are the wrapped quantizer's.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from fsq_jax.quantizers.base import QuantizerOutput


class Projected(nn.Module):
    """`dim` -> the quantizer's own width -> quantize -> back to `dim`.

    Attributes:
      quantizer: any quantizer module of this package (FSQ, VQ, ResidualFSQ, LFQ).
      dim: width of the vectors going in and out, e.g. the encoder's.
      dtype: computation dtype of the projections (the quantizer keeps its own).
    """

    quantizer: nn.Module
    dim: int
    dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        if self.dim < 1:
            raise ValueError(f"Projected: dim must be >= 1, got {self.dim}")
        self.project_in = nn.Dense(int(self.quantizer.dim), dtype=self.dtype)
        self.project_out = nn.Dense(self.dim, dtype=self.dtype)

    def __call__(self, z: jax.Array, train: bool = False) -> QuantizerOutput:
        """z: [..., dim] -> QuantizerOutput with quantized [..., dim] (straight-through to z
        through both projections) and the quantizer's indices, loss and metrics."""
        if z.ndim == 0 or z.shape[-1] != self.dim:
            raise ValueError(f"Projected: z last dimension must be dim={self.dim}, got shape "
                             f"{z.shape}")
        out = self.quantizer(self.project_in(z), train=train)
        return dataclasses.replace(out, quantized=self.project_out(out.quantized).astype(z.dtype))

    def indices_to_quantized(self, indices: jax.Array) -> jax.Array:
        """indices (as `__call__` returns them) -> the [..., dim] vectors a decoder takes."""
        return self.project_out(self.quantizer.indices_to_quantized(indices))

    def indices_to_codes(self, indices: jax.Array) -> jax.Array:
        """The quantizer's codes of `indices` (in its own width, before `project_out`)."""
        return self.quantizer.indices_to_codes(indices)

    def codes_to_indices(self, codes: jax.Array) -> jax.Array:
        """The quantizer's indices of its own codes."""
        return self.quantizer.codes_to_indices(codes)

    @property
    def codebook_size(self) -> int:
        return int(self.quantizer.codebook_size)
