"""Codebook statistics (histograms, usage, perplexity, entropy) as JAX, numpy and clu metrics.

Statistics accumulate as a histogram of size `codebook_size` (never the batches themselves, never
the implicit FSQ codebook as vectors), so usage over a whole evaluation set costs one `[K]` array.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Quantizers report per-batch perplexity/usage only up to this codebook size (one [K] scatter-add).
MAX_BATCH_HISTOGRAM = 2**16


def _check_size(codebook_size: int) -> int:
    if isinstance(codebook_size, bool) or int(codebook_size) != codebook_size or codebook_size < 1:
        raise ValueError(f"codebook_size must be a positive integer, got {codebook_size!r}")
    return int(codebook_size)


# ----------------------------------------------------------------------------------------------
# JAX (traceable) helpers.


def histogram(indices: jax.Array, codebook_size: int, mask: jax.Array | None = None) -> jax.Array:
    """Counts of each code.

    Args:
      indices: int [...] (any shape; multi-codebook indices are pooled).
      codebook_size: K.
      mask: optional bool/0-1 array of shape `indices.shape[:k]` (e.g. per example); masked-out
        entries are not counted.
    Returns:
      int32 [K].
    """
    codebook_size = _check_size(codebook_size)
    indices = jnp.asarray(indices).astype(jnp.int32)
    if mask is None:
        weights = jnp.ones_like(indices)
    else:
        mask = jnp.asarray(mask)
        if mask.ndim > indices.ndim:
            raise ValueError(f"mask {mask.shape} has more dimensions than indices {indices.shape}")
        # A per-example mask [B] applies to all of that example's indices [B, ...].
        mask = mask.reshape(mask.shape + (1,) * (indices.ndim - mask.ndim))
        weights = jnp.broadcast_to(mask, indices.shape).astype(jnp.int32)
    indices, weights = indices.reshape(-1), weights.reshape(-1)
    # Out-of-range indices (negative ones included) are dropped, never wrapped or clipped.
    weights = jnp.where((indices >= 0) & (indices < codebook_size), weights, 0)
    return jnp.zeros((codebook_size,), jnp.int32).at[indices].add(weights, mode="drop")


def entropy_from_counts(counts: jax.Array) -> jax.Array:
    """Entropy in nats of the empirical distribution `counts / sum(counts)` (0 if empty)."""
    counts = jnp.asarray(counts, jnp.float32)
    total = jnp.sum(counts)
    probs = counts / jnp.maximum(total, 1.0)
    return -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0))


def batch_metrics(indices: jax.Array, codebook_size: int) -> dict[str, jax.Array]:
    """`perplexity` (exp entropy of the batch's code distribution) and `codebook_usage_batch`
    (fraction of codes used at least once in this batch), float32 scalars."""
    counts = histogram(jax.lax.stop_gradient(indices), codebook_size)
    return {
        "perplexity": jnp.exp(entropy_from_counts(counts)),
        "codebook_usage_batch": jnp.mean((counts > 0).astype(jnp.float32)),
    }


def quantizer_batch_metrics(indices: jax.Array, codebook_size: int,
                            enabled: bool = True) -> dict[str, jax.Array]:
    """`batch_metrics` as a quantizer reports them: empty when disabled or when the codebook is
    above `MAX_BATCH_HISTOGRAM` (a per-step [K] histogram would cost more than the step)."""
    if not enabled or codebook_size > MAX_BATCH_HISTOGRAM:
        return {}
    return batch_metrics(indices, codebook_size)


# ----------------------------------------------------------------------------------------------
# numpy helpers (host side, for evaluation scripts and tables).


def _as_counts(counts: Any) -> np.ndarray:
    counts = np.asarray(counts)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D histogram, got shape {counts.shape}")
    if np.any(counts < 0):
        raise ValueError("counts must be non-negative")
    return counts.astype(np.float64)


def counts_from_indices(indices: Any, codebook_size: int) -> np.ndarray:
    """numpy histogram of int indices (any shape) -> int64 [codebook_size]."""
    codebook_size = _check_size(codebook_size)
    indices = np.asarray(indices).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= codebook_size):
        raise ValueError(f"indices out of range [0, {codebook_size})")
    return np.bincount(indices.astype(np.int64), minlength=codebook_size)


def usage(counts: Any) -> float:
    """Fraction of codes used at least once."""
    counts = _as_counts(counts)
    return float(np.mean(counts > 0))


def entropy_bits(counts: Any) -> float:
    """Entropy in bits of the code distribution (0 for an empty histogram)."""
    counts = _as_counts(counts)
    total = counts.sum()
    if total == 0:
        return 0.0
    probs = counts[counts > 0] / total
    return float(-np.sum(probs * np.log2(probs)))


def perplexity(counts: Any) -> float:
    """2 ** entropy_bits: the effective number of codes in use."""
    return float(2.0 ** entropy_bits(counts))


def summary(counts: Any) -> dict[str, float]:
    """usage, perplexity, entropy_bits and num_used of a histogram, as Python floats."""
    counts_np = _as_counts(counts)
    return {
        "usage": usage(counts_np),
        "perplexity": perplexity(counts_np),
        "entropy_bits": entropy_bits(counts_np),
        "num_used": float(np.count_nonzero(counts_np)),
    }
