"""Evaluators in the big_vision style: built from config plus task callables, `run(state)` yields
`(metric_name, value)` pairs, which the training loop logs as `<evaluator name>/<metric>`.
Every evaluator takes its `name` first, then the task's function and the data.

They are thin: the task supplies how to predict from a train state, the data supplies batches,
and the pure accumulators of this package (`fid.FeatureStats`, `prdc.precision_recall`,
`depth.DepthMetrics`, `panoptic.PanopticQuality`, `codebook_report.CodeCounter`) do the math.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from fsq_jax.eval import codebook_report, depth, fid, inception, panoptic, prdc

Batch = Mapping[str, np.ndarray]
DataIterFn = Callable[[], Iterable[Batch]]


def _as_uint8_images(images: Any, what: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"{what} must return uint8 images [B, H, W, 3] in [0, 255], got "
                         f"{images.dtype}.")
    return inception.check_images(images)


class FIDEvaluator:
    """FID, precision and recall (k=3) of generated images against a reference split.

    Args:
      name: evaluator name (metric prefix in logs).
      generate_fn: `(state, batch, rng) -> uint8 [B, H, W, 3]` images (samples or
        reconstructions of `batch`).
      data_iter_fn: returns an iterable of batches; each is passed to `generate_fn`, and
        `batch["image"]` is the reference set unless `reference_images_fn` is given.
      reference_key: cache key of the reference statistics, e.g. "imagenet2012/train/256".
      num_samples: number of generated (and reference) images.
      cache_dir: converted Inception weights and reference statistics (`~/.cache/fsq_jax`).
      reference_images_fn: optional iterable of uint8 reference batches.
      compute_precision_recall: also yield `precision` and `recall` (needs the reference
        features in memory: num_samples x 2048 float32).
      allow_singular: permit num_samples <= 2048 (tiny runs); FID then uses pytorch-fid's eps
        offset and is only a smoke-test number.
      seed: base of the rng passed to `generate_fn` (folded with the batch index).
      extractor: a shared `inception.FeatureExtractor` (created lazily otherwise).
    """

    def __init__(self, name: str, generate_fn: Callable[[Any, Batch, jax.Array], np.ndarray],
                 data_iter_fn: DataIterFn, reference_key: str, num_samples: int,
                 cache_dir: str | os.PathLike | None = None, *,
                 reference_images_fn: Callable[[], Iterable[np.ndarray]] | None = None,
                 compute_precision_recall: bool = True, allow_singular: bool = False,
                 seed: int = 0, extractor: fid.FeatureFn | None = None):
        if num_samples < 2:
            raise ValueError(f"num_samples must be >= 2, got {num_samples}.")
        feature_dim = getattr(extractor, "feature_dim", inception.FEATURE_DIM)
        if num_samples <= feature_dim and not allow_singular:
            raise ValueError(f"num_samples={num_samples} <= {feature_dim} feature "
                             "dimensions gives a singular covariance; use more samples or "
                             "allow_singular=True (smoke tests only).")
        fid._stats_filename(reference_key)  # validate early
        self.name = name
        self.generate_fn, self.data_iter_fn = generate_fn, data_iter_fn
        self.reference_key, self.num_samples = reference_key, num_samples
        self.cache_dir = cache_dir
        self.reference_images_fn = reference_images_fn or (
            lambda: (batch["image"] for batch in data_iter_fn()))
        self.compute_precision_recall = compute_precision_recall
        self.allow_singular, self.seed = allow_singular, seed
        self._extractor = extractor

    @property
    def extractor(self) -> fid.FeatureFn:
        if self._extractor is None:
            self._extractor = inception.FeatureExtractor(self.cache_dir)
        return self._extractor

    def _reference_features(self) -> np.ndarray:
        """Reference features `[num_samples, 2048]`, cached beside the statistics as `.npy`."""
        root = Path(self.cache_dir) if self.cache_dir is not None else (
            inception.default_cache_dir())
        name = fid._stats_filename(f"{self.reference_key}/n{self.num_samples}")
        path = root / "fid_features" / name.replace(".npz", ".npy")
        if path.is_file():
            return np.load(path)
        features = []
        count = 0
        for images in self.reference_images_fn():
            images = _as_uint8_images(images, "reference_images_fn")[: self.num_samples - count]
            features.append(self.extractor(images))
            count += len(images)
            if count >= self.num_samples:
                break
        if count < 2:
            raise ValueError(f"reference set {self.reference_key!r} yielded {count} images.")
        features = np.concatenate(features)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, features)
        os.replace(tmp, path)  # atomic: concurrent readers never see a partial file
        return features

    def run(self, state: Any) -> Iterator[tuple[str, float]]:
        stats = fid.FeatureStats(getattr(self.extractor, "feature_dim", inception.FEATURE_DIM))
        generated = []
        rng = jax.random.key(self.seed)
        for index, batch in enumerate(self.data_iter_fn()):
            generated_images = self.generate_fn(state, batch, jax.random.fold_in(rng, index))
            images = _as_uint8_images(generated_images, "generate_fn")
            images = images[: self.num_samples - stats.count]
            features = self.extractor(images)
            stats.update(features)
            if self.compute_precision_recall:
                generated.append(features)
            if stats.count >= self.num_samples:
                break
        if stats.count < self.num_samples:
            raise ValueError(f"data_iter_fn ran out after {stats.count} of {self.num_samples} "
                             "samples.")
        if self.compute_precision_recall:
            real = self._reference_features()
            reference = fid.FeatureStats(real.shape[1]).update(real)
        else:
            reference = fid.reference_stats(f"{self.reference_key}/n{self.num_samples}",
                                            self.reference_images_fn,
                                            self.cache_dir, extractor=self.extractor,
                                            max_samples=self.num_samples)
        yield "fid", fid.fid_from_stats(stats, reference, allow_singular=self.allow_singular)
        if self.compute_precision_recall:
            pr = prdc.precision_recall(real, np.concatenate(generated))
            yield "precision", pr["precision"]
            yield "recall", pr["recall"]


class DepthEvaluator:
    """RMSE, AbsRel, log10 and delta1..3 of `predict_fn(state, batch) -> depth [B, h, w]`
    against `batch["depth"]` (see `depth.DepthMetrics` for the conventions)."""

    def __init__(self, name: str, predict_fn: Callable[[Any, Batch], np.ndarray],
                 data_iter_fn: DataIterFn, *, min_depth: float = 1e-3, max_depth: float = 10.0,
                 crop: str | None = None, clip_prediction: bool = False):
        self.name, self.predict_fn, self.data_iter_fn = name, predict_fn, data_iter_fn
        self.kwargs = dict(min_depth=min_depth, max_depth=max_depth, crop=crop,
                           clip_prediction=clip_prediction)
        depth.DepthMetrics(**self.kwargs)  # validate early

    def run(self, state: Any) -> Iterator[tuple[str, float]]:
        metrics = depth.DepthMetrics(**self.kwargs)
        for batch in self.data_iter_fn():
            metrics.update(np.asarray(self.predict_fn(state, batch)), np.asarray(batch["depth"]))
        yield from metrics.result().items()


class PanopticEvaluator:
    """PQ/SQ/RQ (overall, things, stuff) of `predict_fn(state, batch) -> (semantic, instance)`
    `[B, H, W]` against `batch["panoptic_semantic"]`, `batch["panoptic_instance"]` (and
    `batch["panoptic_crowd"]` when present)."""

    def __init__(self, name: str,
                 predict_fn: Callable[[Any, Batch], tuple[np.ndarray, np.ndarray]],
                 data_iter_fn: DataIterFn, thing_classes: Iterable[int]):
        self.name, self.predict_fn, self.data_iter_fn = name, predict_fn, data_iter_fn
        self.thing_classes = tuple(thing_classes)

    def run(self, state: Any) -> Iterator[tuple[str, float]]:
        metric = panoptic.PanopticQuality(self.thing_classes)
        for batch in self.data_iter_fn():
            semantic, instance = self.predict_fn(state, batch)
            metric.update(batch["panoptic_semantic"], batch["panoptic_instance"],
                          np.asarray(semantic), np.asarray(instance),
                          gt_crowd=batch.get("panoptic_crowd"))
        yield from metric.result().items()


class CodebookUsageEvaluator:
    """Codebook usage, perplexity and entropy of `indices_fn(state, batch) -> int indices` over a
    split; writes `<out_dir>/<name>_histogram.png` and `.npy` counts when `out_dir` is set."""

    def __init__(self, name: str, indices_fn: Callable[[Any, Batch], np.ndarray],
                 data_iter_fn: DataIterFn, codebook_size: int,
                 out_dir: str | os.PathLike | None = None):
        if codebook_size < 1:
            raise ValueError(f"codebook_size must be positive, got {codebook_size}.")
        self.name, self.indices_fn, self.data_iter_fn = name, indices_fn, data_iter_fn
        self.codebook_size, self.out_dir = codebook_size, out_dir

    def run(self, state: Any) -> Iterator[tuple[str, float]]:
        counter = codebook_report.CodeCounter(self.codebook_size)
        for batch in self.data_iter_fn():
            counter.update(np.asarray(self.indices_fn(state, batch)))
        if self.out_dir is not None:
            out = Path(self.out_dir)
            out.mkdir(parents=True, exist_ok=True)
            np.save(out / f"{self.name}_counts.npy", counter.counts)
            codebook_report.save_histogram_png(counter.counts, out / f"{self.name}_histogram.png",
                                               title=self.name)
        stats = codebook_report.codebook_stats(counter.counts)
        for key in ("usage", "perplexity", "entropy_bits"):
            yield key, stats[key]
