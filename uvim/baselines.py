"""Trivial baselines a UViM model must beat, scored with the task's own evaluation metric.

Depth: the mean training depth everywhere. Panoptic: every pixel labelled with the most frequent
stuff class (background only, no instances). Colorization: the grayscale input as the output.
Run: `python scripts/baselines.py --config configs/uvim/depth.py:fsq,tiny`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import ml_collections
import numpy as np

from fsq_jax import images as image_lib
from uvim.outputs import build_output


def _batches(config: ml_collections.ConfigDict, split: str, num_batches: int,
             batch_size: int) -> Iterator[Mapping[str, np.ndarray]]:
    from fsq_jax import data

    iterator = iter(data.build(config.data, split, batch_size))
    for _ in range(num_batches):
        yield next(iterator)


def baseline_prediction(config: ml_collections.ConfigDict, batch: Mapping[str, np.ndarray],
                        statistics: Mapping[str, float]) -> dict[str, np.ndarray]:
    """The trivial prediction for one batch (`statistics` from `training_statistics`)."""
    name = config.output.name
    if name == "depth":
        return {"depth": np.full(batch["depth"].shape, statistics["mean_depth"], np.float32)}
    if name == "panoptic":
        shape = batch["panoptic_semantic"].shape
        return {"semantic": np.full(shape, int(statistics["background_class"]), np.int32),
                "instance": np.zeros(shape, np.int32)}
    gray = np.asarray(image_lib.to_float(batch["gray"]))
    return {"image": np.broadcast_to(gray, (*gray.shape[:-1], 3))}


def training_statistics(config: ml_collections.ConfigDict, num_batches: int,
                        batch_size: int) -> dict[str, float]:
    """Mean valid depth / most frequent stuff class over training batches."""
    name = config.output.name
    if name == "colorization":
        return {}
    output = build_output(config.output)
    total, count = 0.0, 0
    histogram = np.zeros(max(int(config.output.get("num_classes", 1)), 1), np.int64)
    for batch in _batches(config, "train", num_batches, batch_size):
        if name == "depth":
            depth = batch["depth"]
            valid = (depth > output.min_depth) & (depth < output.max_depth)
            total += float(depth[valid].sum())
            count += int(valid.sum())
        else:
            semantic = batch["panoptic_semantic"]
            histogram += np.bincount(semantic[semantic >= 0].ravel(),
                                     minlength=len(histogram))[: len(histogram)]
    if name == "depth":
        return {"mean_depth": total / max(count, 1)}
    stuff = np.ones(len(histogram), bool)
    stuff[list(output.thing_classes)] = False
    return {"background_class": int(np.argmax(np.where(stuff, histogram, -1)))}


def evaluate_baseline(config: ml_collections.ConfigDict, num_batches: int = 8,
                      batch_size: int = 64) -> dict[str, float]:
    """The task metric of the trivial baseline on `num_batches` validation batches."""
    output = build_output(config.output)
    statistics = training_statistics(config, num_batches, batch_size)
    metric = output.new_metric()
    for batch in _batches(config, "validation", num_batches, batch_size):
        metric.update(baseline_prediction(config, batch, statistics), batch)
    return {**statistics, **metric.result()}
