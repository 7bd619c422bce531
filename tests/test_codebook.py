"""Codebook statistics: histograms, numpy helpers and clu metrics merging across steps/devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsq_jax import codebook
from fsq_jax.quantizers import FSQ


def test_histogram_matches_bincount_and_respects_mask():
    indices = jax.random.randint(jax.random.PRNGKey(0), (4, 6, 5), 0, 37)
    counts = codebook.histogram(indices, 37)
    assert counts.dtype == jnp.int32
    np.testing.assert_array_equal(
        np.asarray(counts), np.bincount(np.asarray(indices).ravel(), minlength=37)
    )
    mask = jnp.array([1, 0, 1, 0])  # per example
    masked = codebook.histogram(indices, 37, mask=mask)
    kept = np.asarray(indices)[np.asarray(mask) > 0]
    np.testing.assert_array_equal(np.asarray(masked), np.bincount(kept.ravel(), minlength=37))
    # Out-of-range indices are dropped, not clipped onto a real code.
    np.testing.assert_array_equal(
        np.asarray(codebook.histogram(jnp.array([0, 5, -1]), 3)), [1, 0, 0]
    )
    with pytest.raises(ValueError, match="codebook_size"):
        codebook.histogram(indices, 0)


def test_numpy_helpers_values():
    uniform = np.full(1024, 3)
    assert codebook.usage(uniform) == 1.0
    np.testing.assert_allclose(codebook.entropy_bits(uniform), 10.0)
    np.testing.assert_allclose(codebook.perplexity(uniform), 1024.0)
    skewed = np.array([2, 1, 1, 0, 0, 0, 0, 0])
    assert codebook.usage(skewed) == 3 / 8
    np.testing.assert_allclose(codebook.entropy_bits(skewed), 1.5)
    np.testing.assert_allclose(codebook.perplexity(skewed), 2**1.5)
    assert codebook.entropy_bits(np.zeros(4)) == 0.0 and codebook.usage(np.zeros(4)) == 0.0
    assert codebook.summary(skewed) == {
        "usage": 3 / 8,
        "perplexity": pytest.approx(2**1.5),
        "entropy_bits": 1.5,
        "num_used": 3.0,
    }
    np.testing.assert_array_equal(codebook.counts_from_indices([[0, 2], [2, 2]], 4), [1, 0, 3, 0])
    with pytest.raises(ValueError, match="out of range"):
        codebook.counts_from_indices([4], 4)
    with pytest.raises(ValueError, match="non-negative"):
        codebook.usage([1, -1])
    with pytest.raises(ValueError, match="1-D"):
        codebook.usage(np.ones((2, 2)))


def test_fsq_usage_up_to_2_16_from_indices_only():
    """Usage of the 64000-code FSQ accumulates from indices alone, batch by batch under jit."""
    fsq = FSQ(levels=(8, 8, 8, 5, 5, 5))

    @jax.jit
    def accumulate(counts, z):
        return counts + codebook.histogram(fsq.apply({}, z).indices, fsq.codebook_size)

    counts = jnp.zeros((fsq.codebook_size,), jnp.int32)
    grid = fsq.indices_to_codes(jnp.arange(fsq.codebook_size))  # [64000, 6]
    # Feed inverse-bounded grid points in 8 batches so every code is hit exactly once.
    levels = np.array([8, 8, 8, 5, 5, 5], np.float32)
    half_l = (levels - 1) * (1 - 1e-3) / 2
    offset = np.where(levels % 2 == 0, 0.5, 0.0).astype(np.float32)
    q = grid * (levels // 2)
    z = jnp.arctanh(jnp.clip((q + offset) / half_l, -1 + 1e-4, 1 - 1e-4)) - np.tan(offset / half_l)
    for batch in jnp.split(z, 8):
        counts = accumulate(counts, batch)
    assert counts.shape == (64000,)
    np.testing.assert_array_equal(np.asarray(counts), 1)
    assert codebook.usage(np.asarray(counts)) == 1.0
    half = codebook.histogram(jnp.arange(32000), fsq.codebook_size)
    assert codebook.usage(np.asarray(half)) == 0.5
