"""Improved precision/recall (k-NN manifolds) and density/coverage: hand-worked and brute force."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from fsq_jax.eval import prdc


def _column(values):
    return np.asarray(values, np.float64)[:, None]


def test_hand_worked_1d_k1():
    real = _column([0, 1, 2, 3, 10])  # k=1 radii: 1, 1, 1, 1, 7
    fake = _column([0.5, 5, 17.5, 20])  # k=1 radii: 4.5, 4.5, 2.5, 2.5
    np.testing.assert_allclose(prdc.knn_radii(real, k=1), [1, 1, 1, 1, 7])
    result = prdc.precision_recall(real, fake, k=1)
    # 0.5 lies in the balls of 0 and 1; 5 in the ball of 10; 17.5 and 20 in none.
    assert result["precision"] == 2 / 4
    # Every real sample but 10 is within 4.5 of 0.5 or 5.
    assert result["recall"] == 4 / 5
    # Density: (2 + 1) ball memberships / (k * 4 fakes).
    assert result["density"] == 3 / 4
    # Coverage: nearest fake strictly inside the ball for 0 (0.5), 1 (0.5), 10 (5 < 7).
    assert result["coverage"] == 3 / 5


def test_boundary_counts_as_inside():
    real = _column([0, 1])  # radii 1, 1
    fake = _column([2, 3])  # 2 is exactly on the ball of 1
    assert prdc.precision_recall(real, fake, k=1)["precision"] == 0.5


def _brute_force(real, fake, k):
    def radii(x):
        return np.sort(cdist(x, x), axis=1)[:, k]

    real_radii, fake_radii = radii(real), radii(fake)
    distances = cdist(real, fake)  # [N, M]
    inside = distances <= real_radii[:, None]
    return {
        "precision": np.mean([inside[:, j].any() for j in range(len(fake))]),
        "recall": np.mean([(distances[i] <= fake_radii).any() for i in range(len(real))]),
        "density": inside.sum() / (k * len(fake)),
        "coverage": np.mean(distances.min(1) < real_radii),
    }


def test_matches_brute_force_k3_and_is_block_invariant():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(70, 5))
    fake = rng.normal(size=(50, 5)) * 1.3 + 0.4
    expected = _brute_force(real, fake, k=3)
    for block in (7, 1024):
        result = prdc.precision_recall(real, fake, block=block)
        for key, value in expected.items():
            assert result[key] == pytest.approx(value, abs=1e-12), key
    assert 0 < expected["precision"] < 1 and 0 < expected["recall"] < 1


def test_identical_sets_are_perfect():
    x = np.random.default_rng(1).normal(size=(30, 4))
    result = prdc.precision_recall(x, x.copy())
    assert result["precision"] == result["recall"] == result["coverage"] == 1.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="same D"):
        prdc.precision_recall(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError, match="nearest neighbours need > 3"):
        prdc.precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))
    with pytest.raises(ValueError, match="NaN"):
        prdc.precision_recall(np.full((5, 2), np.nan), np.zeros((5, 2)))
