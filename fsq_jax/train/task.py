"""The protocols between the loop and a task: what a task supplies, what an evaluator yields."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

import jax
import numpy as np

from fsq_jax.train.state import TrainState

Batch = Mapping[str, jax.Array]


@runtime_checkable
class Evaluator(Protocol):
    """Computes final metrics of a state (FID, PQ, codebook usage, ...)."""

    name: str

    def run(self, state: TrainState) -> Iterator[tuple[str, float]]:
        """Yields `(metric name, value)` pairs."""
        ...


@runtime_checkable
class Task(Protocol):
    """What a task supplies to `fsq_jax.train.train_and_evaluate`.

    `batch` arrives on the mesh, sharded along the batch axis; `rng` is
    `fold_in(base_rng, step)`. `train_step` and `eval_step` must be pure (the loop jits them
    and donates the state).

    A stage-II task loads its frozen stage-I model with `fsq_jax.train.restore_latest(workdir)`
    (host numpy dict of `step`, `params`, `opt_state`, `ema_params`, `model_state`), or typed
    with `restore_latest(workdir, target=jax.eval_shape(stage1.init_state, rng, batch))`.

    Optional hooks the loop uses when present:
      `reference_config() -> ConfigDict`: every field the task accepts; the loop rejects
        unknown keys and wrong types against it before compiling anything.
      `check_config(config) -> None`: raises `fsq_jax.train.ConfigError` (or ValueError) naming
        the field for impossible values (e.g. image size not divisible by the patch size).
      `data_fn(data_config, split, batch_size, **kwargs)`: the task's own batches, with the
        signature of `fsq_jax.data.build` (used unless the caller passes a `data_fn`).
    """

    def init_state(self, rng: jax.Array, batch: Batch) -> TrainState: ...

    def train_step(
        self, state: TrainState, batch: Batch, rng: jax.Array
    ) -> tuple[TrainState, dict[str, jax.Array]]: ...

    def eval_step(
        self, state: TrainState, batch: Batch, rng: jax.Array
    ) -> dict[str, jax.Array]: ...

    def evaluators(self) -> Sequence[Evaluator]: ...

    def images(self, state: TrainState, batch: Batch, rng: jax.Array) -> dict[str, np.ndarray]: ...
