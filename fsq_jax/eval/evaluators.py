"""Evaluators in the big_vision style: `run(state, context)` yields `(metric_name, value)` pairs,
which the training loop logs as `<evaluator name>/<metric>`.

They are thin: the task supplies how to predict from a train state, the loop's `EvalContext`
(`fsq_jax.train.EvalContext`) supplies the batches, the devices and the rng, and the pure
accumulators of this package (`fid.FeatureStats`, `prdc.precision_recall`,
`codebook_report.CodeCounter`) do the math.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from fsq_jax.eval import codebook_report, fid, inception, prdc

Batch = Mapping[str, np.ndarray]
# (state, host batch, rng, context) -> uint8 images [B, H, W, 3]
GenerateFn = Callable[[Any, Batch, jax.Array, Any], np.ndarray]


def _as_uint8_images(images: Any, what: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"{what} must return uint8 images [B, H, W, 3] in [0, 255], got "
                         f"{images.dtype}.")
    return inception.check_images(images)


class FIDEvaluator:
    """FID (and optionally precision and recall, k=3) of generated images against real ones.

    Args:
      name: evaluator name (metric prefix in logs).
      generate_fn: `(state, batch, rng, context) -> uint8 [B, H, W, 3]`: samples or
        reconstructions for the batch (the rng is the context's key of that batch).
      num_samples: number of generated (and reference) images.
      batch_size: global batch size of the generated images.
      reference_key: cache key of the reference statistics, e.g. "imagenet2012/train/256".
      reference_split: split whose first `num_samples` images are the reference.
      split: split whose batches are passed to `generate_fn`.
      cache_dir: converted Inception weights and reference statistics (`~/.cache/fsq_jax`).
      compute_precision_recall: also yield `precision` and `recall` (needs the reference
        features in memory: num_samples x 2048 float32).
      allow_singular: permit num_samples <= 2048 (tiny runs); FID then uses pytorch-fid's eps
        offset and is only a smoke-test number.
      extractor: a shared `inception.FeatureExtractor` (created lazily otherwise).
    """

    def __init__(self, name: str, generate_fn: GenerateFn, *, num_samples: int,
                 batch_size: int, reference_key: str, reference_split: str = "train",
                 split: str = "validation", cache_dir: str | os.PathLike | None = None,
                 compute_precision_recall: bool = True, allow_singular: bool = False,
                 extractor: fid.FeatureFn | None = None):
        if num_samples < 2:
            raise ValueError(f"num_samples must be >= 2, got {num_samples}.")
        feature_dim = getattr(extractor, "feature_dim", inception.FEATURE_DIM)
        if num_samples <= feature_dim and not allow_singular:
            raise ValueError(f"num_samples={num_samples} <= {feature_dim} feature "
                             "dimensions gives a singular covariance; use more samples or "
                             "allow_singular=True (smoke tests only).")
        fid.stats_filename(reference_key)  # validates the key early
        self.name, self.generate_fn = name, generate_fn
        self.num_samples, self.batch_size = num_samples, batch_size
        self.reference_key, self.reference_split, self.split = (reference_key, reference_split,
                                                                split)
        self.cache_dir = cache_dir
        self.compute_precision_recall = compute_precision_recall
        self.allow_singular = allow_singular
        self._extractor = extractor

    @property
    def extractor(self) -> fid.FeatureFn:
        if self._extractor is None:
            self._extractor = inception.FeatureExtractor(self.cache_dir)
        return self._extractor

    def _reference_images(self, context: Any) -> Iterator[np.ndarray]:
        for batch in context.batches(self.batch_size, self.num_samples, self.reference_split):
            yield _as_uint8_images(batch["image"], "the reference split")

    def _reference_features(self, context: Any) -> np.ndarray:
        """Reference features `[num_samples, 2048]`, cached beside the statistics as `.npy`."""
        root = Path(self.cache_dir) if self.cache_dir is not None else (
            inception.default_cache_dir())
        name = fid.stats_filename(f"{self.reference_key}/n{self.num_samples}")
        path = root / "fid_features" / name.replace(".npz", ".npy")
        if path.is_file():
            return np.load(path)
        features = np.concatenate([self.extractor(images)
                                   for images in self._reference_images(context)])
        if len(features) < 2:
            raise ValueError(f"reference set {self.reference_key!r} yielded {len(features)} "
                             "images.")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, features)
        os.replace(tmp, path)  # atomic: concurrent readers never see a partial file
        return features

    def run(self, state: Any, context: Any) -> Iterator[tuple[str, float]]:
        stats = fid.FeatureStats(getattr(self.extractor, "feature_dim", inception.FEATURE_DIM))
        generated = []
        batches = context.batches(self.batch_size, self.num_samples, self.split)
        for index, batch in enumerate(batches):
            images = _as_uint8_images(
                self.generate_fn(state, batch, context.batch_rng(index), context), "generate_fn")
            features = self.extractor(images)
            stats.update(features)
            if self.compute_precision_recall:
                generated.append(features)
        if stats.count < self.num_samples:
            raise ValueError(f"the {self.split!r} split ran out after {stats.count} of "
                             f"{self.num_samples} samples.")
        if self.compute_precision_recall:
            real = self._reference_features(context)
            reference = fid.FeatureStats(real.shape[1]).update(real)
        else:
            reference = fid.reference_stats(f"{self.reference_key}/n{self.num_samples}",
                                            lambda: self._reference_images(context),
                                            self.cache_dir, extractor=self.extractor,
                                            max_samples=self.num_samples)
        yield "fid", fid.fid_from_stats(stats, reference, allow_singular=self.allow_singular)
        if self.compute_precision_recall:
            pr = prdc.precision_recall(real, np.concatenate(generated))
            yield "precision", pr["precision"]
            yield "recall", pr["recall"]


class CodebookUsageEvaluator:
    """Codebook usage, perplexity and entropy of the codes of `num_examples` validation examples;
    writes `<out_dir>/<name>_histogram.png` and `.npy` counts when `out_dir` is set.

    Args:
      name: evaluator name.
      indices_fn: `(state, batch, context) -> int indices` of a host batch.
      codebook_size: number of codes.
      num_examples: examples to read; batch_size: their global batch size.
      out_dir: where the histogram goes (None: not written).
    """

    def __init__(self, name: str, indices_fn: Callable[[Any, Batch, Any], np.ndarray],
                 codebook_size: int, *, num_examples: int, batch_size: int,
                 out_dir: str | os.PathLike | None = None):
        if codebook_size < 1:
            raise ValueError(f"codebook_size must be positive, got {codebook_size}.")
        self.name, self.indices_fn, self.codebook_size = name, indices_fn, codebook_size
        self.num_examples, self.batch_size, self.out_dir = num_examples, batch_size, out_dir

    def run(self, state: Any, context: Any) -> Iterator[tuple[str, float]]:
        counter = codebook_report.CodeCounter(self.codebook_size)
        for batch in context.batches(self.batch_size, self.num_examples):
            counter.update(np.asarray(self.indices_fn(state, batch, context)))
        if self.out_dir is not None:
            out = Path(self.out_dir)
            out.mkdir(parents=True, exist_ok=True)
            np.save(out / f"{self.name}_counts.npy", counter.counts)
            codebook_report.save_histogram_png(counter.counts, out / f"{self.name}_histogram.png",
                                               title=self.name)
        stats = codebook_report.codebook_stats(counter.counts)
        for key in ("usage", "perplexity", "entropy_bits"):
            yield key, stats[key]
