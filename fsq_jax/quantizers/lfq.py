"""Lookup-free quantization (LFQ, MAGVIT-v2): each channel is quantized to its sign, codes are ±1.

The index is the bit pattern (bit i set when channel i is positive), so the codebook has 2^dim
entries and no lookup. An entropy loss keeps per-sample assignments confident and the batch's
code distribution spread out, plus a commitment loss pulling z towards its code.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fsq_jax import codebook as codebook_lib
from fsq_jax.quantizers.base import QuantizerOutput
from fsq_jax.quantizers.fsq import check_floating, check_index_range


def _binary_entropy(p: jax.Array) -> jax.Array:
    """Entropy in nats of Bernoulli(p), elementwise, 0 at p in {0, 1}."""

    def plogp(x):
        return jnp.where(x > 0, x * jnp.log(jnp.where(x > 0, x, 1.0)), 0.0)

    return -(plogp(p) + plogp(1.0 - p))


def lfq_entropy_terms(
    z: jax.Array, inv_temperature: float, max_exact_dim: int
) -> tuple[jax.Array, jax.Array]:
    """Per-sample entropy and codebook (batch-average) entropy of the soft code assignment.

    The soft assignment is `softmax_c(-inv_temperature * ||z - c||^2)` over the codes c in {-1,1}^d.
    It factorises over channels, `p(c_i = +1 | z) = sigmoid(4 * inv_temperature * z_i)`, so the
    per-sample entropy is the sum of per-channel binary entropies. The codebook entropy is exact
    (via the [N, 2^d] assignment) when d <= max_exact_dim, otherwise the sum of the per-channel
    entropies of the batch-average marginals (an upper bound).

    Args:
      z: [N, d] float32.
    Returns:
      (mean per-sample entropy, codebook entropy), float32 scalars in nats.
    """
    probs_pos = jax.nn.sigmoid(4.0 * inv_temperature * z)  # [N, d]
    sample_entropy = jnp.mean(jnp.sum(_binary_entropy(probs_pos), axis=-1))
    dim = z.shape[-1]
    if dim <= max_exact_dim:
        bits = (np.arange(2**dim)[:, None] >> np.arange(dim)[None, :]) & 1  # [K, d]
        # log p(c | z) = sum_i log p_i(c_i), p_i(+1) = sigmoid(a_i), p_i(-1) = sigmoid(-a_i).
        logits = 4.0 * inv_temperature * z
        log_pos, log_neg = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
        log_probs = log_neg @ (1 - bits).T.astype(np.float32) + log_pos @ bits.T.astype(
            np.float32
        )  # [N, K]
        avg_probs = jnp.mean(jnp.exp(log_probs), axis=0)
        codebook_entropy = codebook_lib.entropy_from_counts(avg_probs)
    else:
        codebook_entropy = jnp.sum(_binary_entropy(jnp.mean(probs_pos, axis=0)))
    return sample_entropy, codebook_entropy


class LFQ(nn.Module):
    """Lookup-free quantization of z: [..., dim] to codes in {-1, +1}^dim.

    Attributes:
      dim: number of binary channels; codebook_size = 2^dim (dim <= 30).
      entropy_weight: weight of the entropy loss `sample_weight * H(sample) - diversity * H(batch)`.
      sample_entropy_weight: weight of the per-sample entropy (minimised).
      codebook_entropy_weight: weight of the batch-average entropy (maximised).
      commitment_weight: weight of `mean((z - sg(code))^2)`.
      inv_temperature: sharpness of the soft assignment used by the entropy loss.
      max_exact_entropy_dim: up to this dim the codebook entropy is computed exactly.
      check_indices: `indices_to_codes` raises ValueError on out-of-range indices.
      compute_metrics: batch perplexity and usage (codebooks up to 2^16).
    """

    dim: int = 10
    entropy_weight: float = 0.1
    sample_entropy_weight: float = 1.0
    codebook_entropy_weight: float = 1.0
    commitment_weight: float = 0.25
    inv_temperature: float = 100.0
    max_exact_entropy_dim: int = 12
    check_indices: bool = False
    compute_metrics: bool = True

    def __post_init__(self):
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or not 1 <= self.dim <= 30:
            raise ValueError(f"dim must be an integer in [1, 30], got {self.dim!r}")
        for field in (
            "entropy_weight",
            "sample_entropy_weight",
            "codebook_entropy_weight",
            "commitment_weight",
        ):
            if getattr(self, field) < 0:
                raise ValueError(f"{field} must be >= 0, got {getattr(self, field)}")
        if self.inv_temperature <= 0:
            raise ValueError(f"inv_temperature must be > 0, got {self.inv_temperature}")
        super().__post_init__()

    @property
    def codebook_size(self) -> int:
        return 2**self.dim

    def _check_dim(self, z: jax.Array) -> None:
        if z.ndim == 0 or z.shape[-1] != self.dim:
            raise ValueError(f"z last dimension must equal dim={self.dim}, got shape {z.shape}")

    def __call__(self, z: jax.Array, train: bool = False) -> QuantizerOutput:
        """z: [..., dim] -> quantized ±1 codes (z's dtype), indices int32 [...]."""
        del train
        check_floating(z)
        self._check_dim(z)
        z32 = z.astype(jnp.float32)
        codes = jnp.where(z32 > 0, 1.0, -1.0)
        quantized = jax.lax.stop_gradient(codes) + (z32 - jax.lax.stop_gradient(z32))
        indices = self.codes_to_indices(jax.lax.stop_gradient(codes))

        flat = z32.reshape(-1, self.dim)
        commitment = jnp.mean((flat - jax.lax.stop_gradient(codes.reshape(-1, self.dim))) ** 2)
        sample_entropy, codebook_entropy = lfq_entropy_terms(
            flat, self.inv_temperature, self.max_exact_entropy_dim
        )
        entropy_loss = (
            self.sample_entropy_weight * sample_entropy
            - self.codebook_entropy_weight * codebook_entropy
        )
        loss = self.entropy_weight * entropy_loss + self.commitment_weight * commitment
        metrics = {
            "commitment_loss": commitment,
            "entropy_loss": entropy_loss,
            "sample_entropy": sample_entropy,
            "codebook_entropy": codebook_entropy,
        }
        metrics.update(codebook_lib.quantizer_batch_metrics(indices, self.codebook_size,
                                                            self.compute_metrics))
        return QuantizerOutput(
            quantized=quantized.astype(z.dtype),
            indices=indices,
            loss=loss.astype(jnp.float32),
            metrics=metrics,
        )

    def codes_to_indices(self, codes: jax.Array) -> jax.Array:
        """codes [..., dim] (sign taken: > 0 is bit 1) -> int32 [...]."""
        self._check_dim(codes)
        bits = (codes > 0).astype(jnp.int32)
        return jnp.sum(bits << np.arange(self.dim, dtype=np.int32), axis=-1, dtype=jnp.int32)

    def indices_to_codes(self, indices: jax.Array) -> jax.Array:
        """int indices [...] -> float32 codes in {-1, +1} [..., dim]."""
        if self.check_indices:
            check_index_range(indices, self.codebook_size)
        bits = (indices.astype(jnp.int32)[..., None] >> np.arange(self.dim, dtype=np.int32)) & 1
        return bits.astype(jnp.float32) * 2.0 - 1.0

    def indices_to_quantized(self, indices: jax.Array) -> jax.Array:
        """int indices [...] -> the float32 vectors [..., dim] a decoder takes (here the codes)."""
        return self.indices_to_codes(indices)
