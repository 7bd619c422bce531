"""Synthetic image batches with the `fsq_jax.data.build` signature, for tests and benchmarks.

Smooth random colour fields (low-resolution noise upsampled), so an autoencoder can actually learn
them; deterministic in (seed, split, step, process), like the real sources.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

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
    cells: int = 4,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields `{"image": uint8 [batch_size // process_count, S, S, 3]}`, S = data.image_size.

    `batch_size` is global, as in `fsq_jax.data.build`; the global batch of `step` is a function of
    (data_config.seed, split, step) only and process `p` gets its `p`-th slice, so any process
    count sees the same global stream and resuming at `start_step` continues it. `num_epochs`
    bounds the stream to that many batches (a stand-in for an epoch); None repeats forever.
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
    step = start_step
    while num_epochs is None or step < start_step + num_epochs:
        rng = np.random.default_rng([int(data_config.seed), split_id, step])
        coarse = rng.integers(0, 256, (batch_size, cells, cells, 3), dtype=np.uint8)
        coarse = coarse[process_index * local : (process_index + 1) * local]
        factor = size // cells
        yield {"image": np.repeat(np.repeat(coarse, factor, axis=1), factor, axis=2)}
        step += 1
