"""Codebook statistics: histograms, numpy helpers and clu metrics merging across steps/devices."""

import clu.metrics
import flax.struct
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


@flax.struct.dataclass
class _Metrics(clu.metrics.Collection):
    usage: codebook.CodebookUsage.of_size(8)
    perplexity: codebook.CodebookPerplexity.of_size(8)
    entropy: codebook.CodebookEntropy.of_size(8)
    histogram: codebook.CodeHistogram.of_size(8)


def test_clu_metrics_accumulate_over_batches():
    metrics = _Metrics.empty()
    for batch in ([0, 1, 1, 1], [2, 3], [3, 3]):
        metrics = metrics.merge(_Metrics.single_from_model_output(indices=jnp.array(batch)))
    values = metrics.compute()
    counts = np.array([1, 3, 1, 3, 0, 0, 0, 0])
    np.testing.assert_array_equal(np.asarray(values["histogram"]), counts)
    assert float(values["usage"]) == 0.5
    np.testing.assert_allclose(float(values["entropy"]), codebook.entropy_bits(counts), rtol=1e-6)
    np.testing.assert_allclose(
        float(values["perplexity"]), np.exp(codebook.entropy_bits(counts) * np.log(2)), rtol=1e-5
    )


def test_clu_metrics_reduce_across_devices():
    """The loop's cross-device path: per-device metrics stacked on axis 0, then reduce()."""
    usage_metric = codebook.CodebookUsage.of_size(6)
    per_device = [usage_metric.from_model_output(jnp.array(x)) for x in ([0, 0], [1, 5], [5, 5])]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *per_device)
    reduced = stacked.reduce()
    np.testing.assert_array_equal(np.asarray(reduced.counts), [2, 1, 0, 0, 0, 3])
    np.testing.assert_allclose(float(reduced.compute()), 0.5)

    # Inside a pmapped computation the same metric gathers with all_gather + reduce.
    devices = jax.local_device_count()
    indices = jnp.arange(devices * 4).reshape(devices, 4) % 6

    def per_shard(idx):
        metric = usage_metric.from_model_output(idx)
        return jax.lax.all_gather(metric, "d").reduce()

    gathered = jax.pmap(per_shard, axis_name="d")(indices)
    np.testing.assert_array_equal(
        np.asarray(gathered.counts[0]), np.bincount(np.asarray(indices).ravel(), minlength=6)
    )


def test_metric_needs_a_size_and_matching_shapes():
    with pytest.raises(ValueError, match="of_size"):
        codebook.CodebookUsage.empty()
    with pytest.raises(ValueError, match="positive integer"):
        codebook.CodebookUsage.of_size(0)
    small = codebook.CodebookUsage.of_size(4).empty()
    big = codebook.CodebookUsage.of_size(5).empty()
    with pytest.raises(ValueError, match="merge"):
        small.merge(big)


def test_fsq_usage_up_to_2_16_from_indices_only():
    """Usage of the 64000-code FSQ accumulates from indices alone, batch by batch under jit."""
    fsq = FSQ(levels=(8, 8, 8, 5, 5, 5))
    metric = codebook.CodebookUsage.of_size(fsq.codebook_size)

    @jax.jit
    def accumulate(state, z):
        return state.merge(metric.from_model_output(fsq.apply({}, z).indices))

    state = metric.empty()
    grid = fsq.indices_to_codes(jnp.arange(fsq.codebook_size))  # [64000, 6]
    # Feed inverse-bounded grid points in 8 batches so every code is hit exactly once.
    levels = np.array([8, 8, 8, 5, 5, 5], np.float32)
    half_l = (levels - 1) * (1 - 1e-3) / 2
    offset = np.where(levels % 2 == 0, 0.5, 0.0).astype(np.float32)
    q = grid * (levels // 2)
    z = jnp.arctanh(jnp.clip((q + offset) / half_l, -1 + 1e-4, 1 - 1e-4)) - np.tan(offset / half_l)
    for batch in jnp.split(z, 8):
        state = accumulate(state, batch)
    assert state.counts.shape == (64000,)
    np.testing.assert_array_equal(np.asarray(state.counts), 1)
    assert float(state.compute()) == 1.0
    half = metric.empty().merge(metric.from_model_output(jnp.arange(32000)))
    assert float(half.compute()) == 0.5
