"""Codebook usage report: counts, usage/perplexity/entropy by hand, histogram PNG, evaluator."""

from __future__ import annotations

import math

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from fsq_jax.eval import codebook_report, evaluators
from fsq_jax.train import EvalContext, sharding


def test_stats_hand_worked():
    counts = np.array([2, 2, 0, 4, 0, 0, 0, 0])  # p = 1/4, 1/4, 1/2 over 3 of 8 codes
    stats = codebook_report.codebook_stats(counts)
    assert stats["usage"] == 3 / 8
    assert stats["entropy_bits"] == pytest.approx(1.5)  # 2 * (1/4 * 2) + 1/2 * 1
    assert stats["perplexity"] == pytest.approx(2**1.5)
    assert stats["codebook_size"] == 8 and stats["num_tokens"] == 8
    uniform = codebook_report.codebook_stats(np.ones(16))
    assert uniform["usage"] == 1.0 and uniform["entropy_bits"] == pytest.approx(4.0)


def test_counter_accumulates_and_merges():
    counter = codebook_report.CodeCounter(6)
    counter.update(np.array([[0, 1], [1, 5]]))
    counter.update(np.array([5, 5, 2]))
    np.testing.assert_array_equal(counter.counts, [1, 2, 1, 0, 0, 3])
    other = codebook_report.CodeCounter(6).update(np.array([3]))
    np.testing.assert_array_equal(counter.merge(other).counts, [1, 2, 1, 1, 0, 3])
    with pytest.raises(ValueError, match="out of range"):
        counter.update(np.array([6]))
    with pytest.raises(ValueError, match="integers"):
        counter.update(np.array([0.5]))
    with pytest.raises(ValueError, match="different codebook sizes"):
        counter.merge(codebook_report.CodeCounter(5))


def test_histogram_png(tmp_path):
    counts = np.random.default_rng(0).poisson(3.0, 64)
    path = codebook_report.save_histogram_png(counts, tmp_path / "sub" / "h.png", title="fsq")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 200
    # An unused codebook still plots.
    codebook_report.save_histogram_png(np.zeros(8), tmp_path / "empty.png")


def test_codebook_usage_evaluator(tmp_path):
    data = [{"tokens": np.array([[0, 1], [2, 3]])}, {"tokens": np.array([[3, 3], [3, 3]])}]
    context = EvalContext(sharding.create_mesh(), jax.random.key(0), 0,
                          lambda config, split, batch_size, **kwargs: iter(data),
                          ml_collections.ConfigDict())
    evaluator = evaluators.CodebookUsageEvaluator(
        "tokenizer", lambda state, batch, context: batch["tokens"] + state, 8, num_examples=4,
        batch_size=2, out_dir=tmp_path)
    values = dict(evaluator.run(0, context))
    # Counts [1, 1, 1, 5, 0, 0, 0, 0] over 8 tokens.
    assert values["usage"] == 0.5
    expected_entropy = -(3 * (1 / 8) * math.log2(1 / 8) + (5 / 8) * math.log2(5 / 8))
    assert values["entropy_bits"] == pytest.approx(expected_entropy)
    assert values["perplexity"] == pytest.approx(2**expected_entropy)
    assert (tmp_path / "tokenizer_histogram.png").is_file()
    np.testing.assert_array_equal(np.load(tmp_path / "tokenizer_counts.npy"),
                                  [1, 1, 1, 5, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="codebook_size"):
        evaluators.CodebookUsageEvaluator("t", lambda s, b, c: b, 0, num_examples=1,
                                          batch_size=1)
