"""Evaluators of the two MaskGIT stages, built from `fsq_jax.eval` and the tasks' host functions.

Stage I: reconstruction FID (reconstructions of validation images against those images) and
codebook usage. Stage II: sampling FID, precision and recall of class-conditional samples (labels
drawn from the validation stream) against the training split, as the FSQ paper evaluates.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np

from fsq_jax import quantizers
from fsq_jax.eval import evaluators as eval_lib
from fsq_jax.eval import inception


def _data_iter_fn(config: ml_collections.ConfigDict, split: str, batch_size: int,
                  num_images: int):
    """A finite stream of ceil(num_images / batch_size) batches of `split`, always the same."""
    from fsq_jax import data

    steps = math.ceil(num_images / batch_size)

    def iterate() -> Iterator[dict[str, np.ndarray]]:
        return itertools.islice(data.build(config.data, split, batch_size, shuffle=False), steps)

    return iterate


def reference_key(config: ml_collections.ConfigDict, split: str) -> str:
    """Cache key of the reference statistics: source, data seed, split and resolution."""
    source = config.data.source.replace("/", "_").replace(":", "-")
    return f"maskgit/{source}-seed{config.data.seed}/{split}/{config.data.image_size}"


def _check(config: ml_collections.ConfigDict) -> tuple[int, int]:
    num_images = int(config.evaluators.num_images)
    batch_size = int(config.evaluators.batch_size)
    if num_images < 2:
        raise ValueError(f"evaluators.num_images = {num_images}: must be >= 2")
    if batch_size < 1:
        raise ValueError(f"evaluators.batch_size = {batch_size}: must be >= 1")
    return num_images, batch_size


def _inception_available() -> bool:
    try:
        inception.load()
    except FileNotFoundError:
        return False
    return True


def tokenizer_evaluators(task: Any) -> list[Any]:
    """[reconstruction FID (when enabled and the Inception weights exist), codebook usage]."""
    config = task.config
    num_images, batch_size = _check(config)
    validation = _data_iter_fn(config, "validation", batch_size, num_images)
    result: list[Any] = []
    if config.evaluators.fid and _inception_available():
        result.append(eval_lib.FIDEvaluator(
            name="reconstruction",
            generate_fn=lambda state, batch, rng: task.reconstruct_fn(state)(batch["image"]),
            data_iter_fn=validation, reference_key=reference_key(config, "validation"),
            num_samples=num_images, compute_precision_recall=False,
            allow_singular=num_images <= inception.FEATURE_DIM,
        ))
    if config.evaluators.usage:
        result.append(eval_lib.CodebookUsageEvaluator(
            name="codebook",
            indices_fn=lambda state, batch: task.tokenize_fn(state)(batch["image"]),
            data_iter_fn=validation, codebook_size=quantizers.codebook_size(config.quantizer),
            out_dir=config.evaluators.get("out_dir") or None,
        ))
    return result


def _sampling_evaluator(config: ml_collections.ConfigDict, generate_fn: Any) -> Any:
    """FID + precision + recall of `generate_fn`'s images against the training split."""
    num_images, batch_size = _check(config)
    train_images = _data_iter_fn(config, "train", batch_size, num_images)
    return eval_lib.FIDEvaluator(
        name="sampling",
        generate_fn=generate_fn,
        data_iter_fn=_data_iter_fn(config, "validation", batch_size, num_images),
        reference_key=reference_key(config, "train"), num_samples=num_images,
        reference_images_fn=lambda: (batch["image"] for batch in train_images()),
        compute_precision_recall=True,
        allow_singular=num_images <= inception.FEATURE_DIM,
        seed=int(config.seed),
    )


def transformer_evaluators(task: Any) -> list[Any]:
    """[sampling FID + precision + recall] (when enabled and the Inception weights exist)."""
    config = task.config
    _check(config)
    if not (config.evaluators.fid and _inception_available()):
        return []
    return [_sampling_evaluator(
        config, lambda state, batch, rng: task.sample_fn(state)(batch["label"], rng))]


def real_images_baseline(config: ml_collections.ConfigDict) -> dict[str, float]:
    """Sampling FID, precision and recall of real validation images in place of samples.

    The best any generator can score under the same evaluation (same image count, same
    reference): FID's small-sample bias and the noise of precision/recall at this size.
    """
    evaluator = _sampling_evaluator(config, lambda state, batch, rng: batch["image"])
    return dict(evaluator.run(None))
