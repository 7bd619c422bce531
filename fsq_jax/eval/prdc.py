"""Improved precision and recall (Kynkäänniemi et al. 2019), plus density and coverage.

Each feature set approximates its manifold by the union of balls around its samples, each ball's
radius being the distance to the sample's k-th nearest neighbour within the same set (k = 3 in
the paper and in the ADM evaluation suite the FSQ paper uses; the sample itself does not count).
Precision is the fraction of generated samples inside the real manifold, recall the fraction of
real samples inside the generated manifold; a sample on a ball's boundary counts as inside.
Density and coverage (Naeem et al. 2020) reuse the real radii and are reported alongside.
Distances are Euclidean in float64, computed block-wise so memory stays O(block * N).
"""

from __future__ import annotations

import numpy as np

DEFAULT_K = 3


def _check_features(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    real, fake = np.asarray(real), np.asarray(fake)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be [N, D] with the same D, got {real.shape} and "
                         f"{fake.shape}.")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    for name, x in (("real", real), ("fake", fake)):
        if len(x) <= k:
            raise ValueError(f"{name} has {len(x)} samples; k={k} nearest neighbours need > {k}.")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{name} features contain NaN or Inf.")
    return real.astype(np.float64), fake.astype(np.float64)


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`[len(a), len(b)]` squared Euclidean distances, clipped at 0 against round-off."""
    d = (a * a).sum(1)[:, None] - 2.0 * (a @ b.T) + (b * b).sum(1)[None, :]
    return np.maximum(d, 0.0)


def knn_radii(features: np.ndarray, k: int = DEFAULT_K, block: int = 1024) -> np.ndarray:
    """Distance of each sample `[N, D]` to its k-th nearest other sample -> `[N]`."""
    features = np.asarray(features, np.float64)
    radii = np.empty(len(features))
    for start in range(0, len(features), block):
        d = _squared_distances(features[start:start + block], features)
        # Column k of the sorted row: index 0 is the sample itself (distance 0).
        radii[start:start + block] = np.partition(d, k, axis=1)[:, k]
    return np.sqrt(radii)


def _inside_counts(queries: np.ndarray, centres: np.ndarray, radii: np.ndarray,
                   block: int) -> np.ndarray:
    """For each query, how many balls (centres, radii) contain it -> int `[len(queries)]`."""
    counts = np.empty(len(queries), np.int64)
    squared_radii = radii * radii
    for start in range(0, len(queries), block):
        d = _squared_distances(queries[start:start + block], centres)
        counts[start:start + block] = (d <= squared_radii[None, :]).sum(1)
    return counts


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = DEFAULT_K,
                     block: int = 1024) -> dict[str, float]:
    """Improved precision/recall and density/coverage of `fake [M, D]` against `real [N, D]`.

    Returns:
      dict with `precision`, `recall`, `density`, `coverage` (floats in [0, 1], density may
      exceed 1).
    """
    real, fake = _check_features(real, fake, k)
    real_radii = knn_radii(real, k, block)
    fake_radii = knn_radii(fake, k, block)
    fake_in_real = _inside_counts(fake, real, real_radii, block)
    real_in_fake = _inside_counts(real, fake, fake_radii, block)
    # Coverage: real samples whose nearest-neighbour ball holds at least one fake sample.
    covered = np.zeros(len(real), bool)
    squared_real_radii = real_radii * real_radii
    for start in range(0, len(real), block):
        d = _squared_distances(real[start:start + block], fake)
        covered[start:start + block] = d.min(1) < squared_real_radii[start:start + block]
    return {
        "precision": float(np.mean(fake_in_real > 0)),
        "recall": float(np.mean(real_in_fake > 0)),
        "density": float(fake_in_real.sum() / (k * len(fake))),
        "coverage": float(np.mean(covered)),
    }
