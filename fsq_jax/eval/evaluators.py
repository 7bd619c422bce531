"""Evaluators in the big_vision style: `run(state, context)` yields `(metric_name, value)` pairs,
which the training loop logs as `<evaluator name>/<metric>`.

They are thin: the task supplies how to predict from a train state, the loop's `EvalContext`
(`fsq_jax.train.EvalContext`) supplies the batches (each example of the split once, padding
marked by `batch["mask"]`), the devices and the rng, and the pure accumulators of this package
(`fid.FeatureStats`, `prdc.precision_recall`, `codebook_report.CodeCounter`) do the math on the
real examples of all hosts (`context.gather`). Each yields `num_examples`, the count it scored.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from fsq_jax.data.pipeline import MASK_KEY
from fsq_jax.eval import codebook_report, fid, inception, prdc, references
from fsq_jax.eval.progress import Progress

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
    """FID (and optionally precision and recall, k=3) of generated images against a reference.

    Generation reads the first `num_samples` examples of `split` once through the context (every
    host its share, padding masked out); the features of all hosts are gathered, so every host
    computes the same numbers from all samples.

    Args:
      name: evaluator name (metric prefix in logs).
      generate_fn: `(state, batch, rng, context) -> uint8 [B, H, W, 3]`: samples or
        reconstructions for every row of the host batch, padding included (the rng is the
        context's key of that batch).
      num_samples: number of generated images.
      batch_size: global batch size of the generated images.
      reference: what the samples are compared with (`references.SplitReference`, a split of
        the run's data; `references.ADMReference`, an ADM reference batch). Default: the first
        `num_samples` images of `reference_split`, cached under `reference_key` + "/n<count>".
      reference_key, reference_split: for the default reference.
      split: split whose batches are passed to `generate_fn`.
      cache_dir: converted Inception weights and reference statistics (`~/.cache/fsq_jax`).
      compute_precision_recall: also yield `precision` and `recall` (the reference's features
        and the samples' are held in memory: N x D float32 each).
      allow_singular: permit sets of <= 2048 images (tiny runs); FID then uses pytorch-fid's eps
        offset and is only a smoke-test number.
      extractor: a shared `inception.FeatureExtractor` (created lazily otherwise).
    """

    def __init__(self, name: str, generate_fn: GenerateFn, *, num_samples: int,
                 batch_size: int, reference: references.SplitReference | references.ADMReference
                 | None = None, reference_key: str | None = None, reference_split: str = "train",
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
        if reference is None:
            if reference_key is None:
                raise ValueError("FIDEvaluator needs a reference or a reference_key.")
            reference = references.SplitReference(
                f"{reference_key}/n{num_samples}", reference_split, num_examples=num_samples,
                pr_examples=num_samples)
        self.name, self.generate_fn = name, generate_fn
        self.num_samples, self.batch_size = num_samples, batch_size
        self.reference, self.split = reference, split
        self.cache_dir = cache_dir
        self.compute_precision_recall = compute_precision_recall
        self.allow_singular = allow_singular
        self._extractor = extractor

    @property
    def extractor(self) -> fid.FeatureFn:
        if self._extractor is None:
            self._extractor = inception.FeatureExtractor(self.cache_dir)
        return self._extractor

    def load_reference(self, context: Any) -> references.Reference:
        """The reference's statistics (and features for precision/recall)."""
        return self.reference.load(context, self.extractor, batch_size=self.batch_size,
                                   cache_dir=self.cache_dir,
                                   features=self.compute_precision_recall)

    def run(self, state: Any, context: Any) -> Iterator[tuple[str, float]]:
        reference = self.load_reference(context)
        stats = fid.FeatureStats(getattr(self.extractor, "feature_dim", inception.FEATURE_DIM))
        generated = []
        batches = context.batches(self.batch_size, self.num_samples, self.split)
        progress = Progress(f"{self.name} FID: generating and scoring {self.split!r} batches",
                            batches.num_examples)
        for index, batch in enumerate(batches):
            images = _as_uint8_images(
                self.generate_fn(state, batch, context.batch_rng(index), context), "generate_fn")
            features = context.gather(
                references.real_features(self.extractor, images, batch[MASK_KEY]), batch)
            if len(features):
                stats.update(features)
            if self.compute_precision_recall:
                generated.append(features)
            progress.update(len(features))
        progress.done()
        if stats.count < self.num_samples:
            raise ValueError(f"the {self.split!r} split ran out after {stats.count} of "
                             f"{self.num_samples} samples.")
        yield "num_examples", stats.count
        yield "fid", references.fid_against(stats, reference,
                                            allow_singular=self.allow_singular)
        if self.compute_precision_recall:
            pr = prdc.precision_recall(reference.features, np.concatenate(generated))
            yield "precision", pr["precision"]
            yield "recall", pr["recall"]


class CodebookUsageEvaluator:
    """Codebook usage, perplexity and entropy of the codes of the validation examples (all of
    them, or the first `num_examples`), each counted once over all hosts; writes
    `<out_dir>/<name>_histogram.png` and `.npy` counts when `out_dir` is set.

    Args:
      name: evaluator name.
      indices_fn: `(state, batch, context) -> int indices [B, ...]` of every row of a host
        batch (padding included; its codes are not counted).
      codebook_size: number of codes.
      num_examples: examples to read (None: the whole split); batch_size: global batch size.
      out_dir: where the histogram goes (None: not written).
    """

    def __init__(self, name: str, indices_fn: Callable[[Any, Batch, Any], np.ndarray],
                 codebook_size: int, *, num_examples: int | None, batch_size: int,
                 out_dir: str | os.PathLike | None = None):
        if codebook_size < 1:
            raise ValueError(f"codebook_size must be positive, got {codebook_size}.")
        self.name, self.indices_fn, self.codebook_size = name, indices_fn, codebook_size
        self.num_examples, self.batch_size, self.out_dir = num_examples, batch_size, out_dir

    def run(self, state: Any, context: Any) -> Iterator[tuple[str, float]]:
        counter = codebook_report.CodeCounter(self.codebook_size)
        scored = 0
        for batch in context.batches(self.batch_size, self.num_examples):
            indices = np.asarray(self.indices_fn(state, batch, context))
            if len(indices) != len(batch[MASK_KEY]):
                raise ValueError(f"{self.name}: indices_fn returned {len(indices)} rows for a "
                                 f"batch of {len(batch[MASK_KEY])}")
            indices = context.gather(indices, batch)
            counter.update(indices)
            scored += len(indices)
        if self.out_dir is not None:
            out = Path(self.out_dir)
            out.mkdir(parents=True, exist_ok=True)
            np.save(out / f"{self.name}_counts.npy", counter.counts)
            codebook_report.save_histogram_png(counter.counts, out / f"{self.name}_histogram.png",
                                               title=self.name)
        stats = codebook_report.codebook_stats(counter.counts)
        yield "num_examples", scored
        for key in ("usage", "perplexity", "entropy_bits"):
            yield key, stats[key]
