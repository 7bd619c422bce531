"""Fréchet Inception Distance: streaming feature statistics and a stable Fréchet distance.

Statistics (count, mean, covariance) accumulate over batches in float64 with Chan et al.'s
pairwise update, so partial statistics from several hosts or shards merge exactly; reference
statistics of a dataset split are cached as `.npz` and reused across evaluations. The distance
follows pytorch-fid (`||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2)`, unbiased covariances);
the matrix square root's trace comes from a symmetric eigendecomposition by default (exact for
positive semi-definite covariances, no complex round-off) or from `scipy.linalg.sqrtm` with
pytorch-fid's imaginary-part check.

Singular covariances: with fewer samples than feature dimensions (N <= 2048) the covariances
are rank deficient and FID is not a meaningful number, so this raises unless the caller opts
in with ``allow_singular=True``; then pytorch-fid's convention applies: ``eps * I`` is added to
both covariances inside the square root only (not to the trace terms).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import scipy.linalg

from fsq_jax.eval import inception

DEFAULT_EPS = 1e-6
# Maps uint8 images [N, H, W, 3] to features [N, D]: an `inception.FeatureExtractor` (D = 2048)
# or, in tests, any callable with a `feature_dim` attribute.
FeatureFn = Callable[[np.ndarray], np.ndarray]


class FeatureStats:
    """Mergeable running mean and covariance of feature vectors, in float64.

    `update(features [N, D])` adds a batch; `merge(other)` combines two accumulators (e.g. from
    several hosts) with the same result as one pass over all samples.
    """

    def __init__(self, dim: int = inception.FEATURE_DIM):
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}.")
        self.dim = dim
        self.count = 0
        self._mean = np.zeros(dim, np.float64)
        self._m2 = np.zeros((dim, dim), np.float64)  # sum of centred outer products

    def update(self, features: np.ndarray) -> FeatureStats:
        """Add a batch of features `[N, D]`; returns self."""
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must be [N, {self.dim}], got {features.shape}.")
        if not np.all(np.isfinite(features)):
            raise ValueError("features contain NaN or Inf.")
        if len(features) == 0:
            return self
        x = features.astype(np.float64)
        batch_mean = x.mean(axis=0)
        centred = x - batch_mean
        self._combine(len(x), batch_mean, centred.T @ centred)
        return self

    def _combine(self, n: int, mean: np.ndarray, m2: np.ndarray) -> None:
        total = self.count + n
        delta = mean - self._mean
        self._m2 = self._m2 + m2 + np.outer(delta, delta) * (self.count * n / total)
        self._mean = self._mean + delta * (n / total)
        self.count = total

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add another accumulator's samples; returns self."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge stats of dim {other.dim} into dim {self.dim}.")
        if other.count:
            self._combine(other.count, other._mean, other._m2)
        return self

    @property
    def mean(self) -> np.ndarray:
        """float64 `[D]`."""
        if self.count == 0:
            raise ValueError("no samples accumulated.")
        return self._mean.copy()

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased covariance, float64 `[D, D]` (as `np.cov(x, rowvar=False)`)."""
        if self.count < 2:
            raise ValueError(f"covariance needs at least 2 samples, got {self.count}.")
        return self._m2 / (self.count - 1)

    def save(self, path: str | os.PathLike) -> None:
        """Write `count`, `mu`, `sigma` and the raw accumulator to `.npz` (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        os.close(fd)
        with open(tmp, "wb") as f:
            np.savez(f, count=np.asarray(self.count), mu=self._mean, m2=self._m2,
                     sigma=self._m2 / max(self.count - 1, 1))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        with np.load(path) as data:
            stats = cls(int(data["mu"].shape[0]))
            stats.count = int(data["count"])
            stats._mean = np.asarray(data["mu"], np.float64)
            stats._m2 = np.asarray(data["m2"], np.float64)
        return stats


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((S1 S2)^1/2) for symmetric PSD S1, S2 from the eigenvalues of a symmetric PSD matrix
    similar to S1 S2: L^T S2 L with S1 = L L^T (Cholesky), or S1^1/2 S2 S1^1/2 when S1 is
    singular. The eigenvalues are real and >= 0 (round-off below 0 is clipped)."""
    try:
        factor = scipy.linalg.cholesky(sigma1, lower=True)
    except np.linalg.LinAlgError:  # singular S1: symmetric square root instead
        w, v = scipy.linalg.eigh(sigma1)
        factor = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    inner = factor.T @ sigma2 @ factor
    eig = scipy.linalg.eigvalsh((inner + inner.T) / 2, driver="evd")
    return float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))


def _trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """pytorch-fid: `scipy.linalg.sqrtm(S1 S2)`, rejecting a large imaginary part."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.all(np.isfinite(covmean)):
        raise ValueError("sqrtm of the covariance product is not finite; the covariances are "
                         "singular (pass allow_singular=True for the eps offset).")
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in sqrtm; the "
                             "covariances are numerically singular.")
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     *, eps: float = 0.0, method: str = "eigh") -> float:
    """Fréchet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    Args:
      mu1, mu2: `[D]` means.
      sigma1, sigma2: `[D, D]` covariances.
      eps: offset `eps * I` added to both covariances inside the square root only (pytorch-fid's
        fallback for singular covariances); 0 for none.
      method: "eigh" (symmetric eigendecomposition) or "sqrtm" (scipy.linalg.sqrtm as pytorch-fid).
    """
    mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    dim = mu1.shape[0]
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"means must both be [D], got {mu1.shape} and {mu2.shape}.")
    if sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(f"covariances must be [{dim}, {dim}], got {sigma1.shape}, {sigma2.shape}.")
    offset = eps * np.eye(dim)
    s1, s2 = sigma1 + offset, sigma2 + offset
    if method == "eigh":
        tr_covmean = _trace_sqrt_product_eigh(s1, s2)
    elif method == "sqrtm":
        tr_covmean = _trace_sqrt_product_sqrtm(s1, s2)
    else:
        raise ValueError(f"method must be 'eigh' or 'sqrtm', got {method!r}.")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def fid_from_stats(stats1: FeatureStats, stats2: FeatureStats, *, allow_singular: bool = False,
                   eps: float = DEFAULT_EPS, method: str = "eigh") -> float:
    """FID between two accumulated feature sets.

    Raises ValueError when either set has no more samples than feature dimensions, unless
    `allow_singular` (then the pytorch-fid `eps` offset is applied inside the square root).
    """
    for name, stats in (("first", stats1), ("second", stats2)):
        if stats.count <= stats.dim and not allow_singular:
            raise ValueError(
                f"the {name} feature set has {stats.count} samples for {stats.dim}-d features: "
                "its covariance is singular and FID is not meaningful. Use more samples (FID "
                "is conventionally reported on 10k-50k) or pass allow_singular=True to apply "
                f"pytorch-fid's eps={eps} offset.")
    singular = stats1.count <= stats1.dim or stats2.count <= stats2.dim
    return frechet_distance(stats1.mean, stats1.covariance, stats2.mean, stats2.covariance,
                            eps=eps if singular else 0.0, method=method)


def stats_of_images(images: Iterable[np.ndarray],
                    extractor: FeatureFn,
                    max_samples: int | None = None) -> FeatureStats:
    """FeatureStats of uint8 image batches `[B, H, W, 3]` (stops after `max_samples`)."""
    stats = FeatureStats(getattr(extractor, "feature_dim", inception.FEATURE_DIM))
    for batch in images:
        batch = inception.check_images(batch)
        if max_samples is not None:
            batch = batch[: max_samples - stats.count]
        if len(batch):
            stats.update(extractor(batch))
        if max_samples is not None and stats.count >= max_samples:
            break
    return stats


def stats_filename(key: str) -> str:
    if not key or not re.fullmatch(r"[A-Za-z0-9_.,:=/+-]+", key) or ".." in key:
        raise ValueError(f"invalid reference-statistics key {key!r}: use e.g. "
                         "'imagenet2012/validation/256' (letters, digits, _.,:=/+-).")
    return key.replace("/", "__") + ".npz"


def reference_stats(key: str, images_iter_fn: Callable[[], Iterable[np.ndarray]],
                    cache_dir: str | os.PathLike | None = None, *,
                    extractor: FeatureFn | None = None,
                    max_samples: int | None = None) -> FeatureStats:
    """Statistics of a reference image set, computed once and cached as `.npz`.

    Args:
      key: names the dataset, split and resolution, e.g. `"imagenet2012/train/256"`; include
        the sample count if it is not the whole split.
      images_iter_fn: returns an iterable of uint8 batches `[B, H, W, 3]`; only called on a
        cache miss.
      cache_dir: root of the cache (default `~/.cache/fsq_jax`); files go to `fid_stats/`.
      extractor: feature extractor (loaded from `cache_dir` when None).
      max_samples: stop after this many images.
    """
    root = Path(cache_dir) if cache_dir is not None else inception.default_cache_dir()
    path = root / "fid_stats" / stats_filename(key)
    if path.is_file():
        return FeatureStats.load(path)
    extractor = extractor if extractor is not None else inception.FeatureExtractor(cache_dir)
    stats = stats_of_images(images_iter_fn(), extractor, max_samples)
    if stats.count < 2:
        raise ValueError(f"reference set {key!r} yielded {stats.count} images; need >= 2.")
    stats.save(path)
    return stats


def colorization_fid(colorized: Iterable[np.ndarray], originals: Iterable[np.ndarray],
                     extractor: FeatureFn, *,
                     allow_singular: bool = False) -> float:
    """FID of colorized images against the original colour images (UViM's colorization metric).

    Both are iterables of uint8 `[B, H, W, 3]` batches of the same images (grayscale inputs
    colorized by the model vs their ground truth); the usual protocol is 5k ImageNet
    validation images ("FID-5k").
    """
    return fid_from_stats(stats_of_images(colorized, extractor),
                          stats_of_images(originals, extractor),
                          allow_singular=allow_singular)
