"""Synthetic image batches with the `fsq_jax.data.build` signature, for tests and benchmarks.

Smooth random colour fields (low-resolution noise upsampled), so an autoencoder can actually learn
them; deterministic in (seed, split, step, process), like the real sources.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from fsq_jax.data.pipeline import evaluation_mask

SPLITS = ("train", "validation", "test")


def smooth_images(
    data_config: Any,
    split: str,
    batch_size: int,
    *,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    shuffle: bool | None = None,
    num_epochs: int | None = None,
    evaluation: bool = False,
    num_examples: int | None = None,
    cells: int = 4,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields `{"image": uint8 [batch_size // process_count, S, S, 3]}`, S = data.image_size.

    `batch_size` is global, as in `fsq_jax.data.build`; the global batch of `step` is a function of
    (data_config.seed, split, step) only and process `p` gets its `p`-th slice, so any process
    count sees the same global stream and resuming at `start_step` continues it. `num_epochs`
    bounds the stream to that many batches (a stand-in for an epoch); None repeats forever.
    `evaluation=True` is `fsq_jax.data.build`'s evaluation pass over a split of `data.eval_size`
    (`data.train_size` for train) examples, or its first `num_examples`: the stream from step 0,
    the last batch's rows past the end marked False in `mask`.
    """
    del shuffle
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    size = int(data_config.image_size)
    if size % cells:
        raise ValueError(f"data.image_size = {size} must be divisible by {cells}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    if batch_size % process_count:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by process_count {process_count}"
        )
    local = batch_size // process_count
    split_id = SPLITS.index(split)
    total = None
    if evaluation:
        split_size = int(data_config.train_size if split == "train" else data_config.eval_size)
        total = split_size if num_examples is None else min(num_examples, split_size)
        num_epochs, start_step = -(-total // batch_size), 0  # one pass, in batches
    step = start_step
    while num_epochs is None or step < start_step + num_epochs:
        rng = np.random.default_rng([int(data_config.seed), split_id, step])
        coarse = rng.integers(0, 256, (batch_size, cells, cells, 3), dtype=np.uint8)
        coarse = coarse[process_index * local : (process_index + 1) * local]
        factor = size // cells
        batch = {"image": np.repeat(np.repeat(coarse, factor, axis=1), factor, axis=2)}
        if total is not None:
            batch["mask"] = evaluation_mask(step, batch_size, total, process_index, process_count)
        yield batch
        step += 1
