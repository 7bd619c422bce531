"""The protocol between the loop and a task: what a task class declares and supplies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar, Protocol, runtime_checkable

import jax
import numpy as np

from fsq_jax.train.evaluation import Evaluator
from fsq_jax.train.state import TrainState

Batch = Mapping[str, jax.Array]


@runtime_checkable
class Task(Protocol):
    """What a task supplies to `fsq_jax.train.train_and_evaluate`.

    Declared on the class, read before the task is built:
      `config_schema`: a dataclass extending `fsq_jax.config_lib.LoopConfig` with the task's
        sections; the loop checks the whole config against it once, before anything is built.
      `frozen_stage_field` (optional): the config field naming a finished stage-I workdir. The
        loop reads that run's config while validating, calls the class's
        `check_frozen(typed_config, frozen_config)` (ValueError on a mismatch) and builds the
        task as `Task(config, frozen=FrozenStage)`; otherwise as `Task(config)`.

    Supplied by the built task: `batch` arrives on the mesh, sharded along the batch axis;
    `rng` is `fold_in(base_rng, step)`. `train_step` and `eval_step` must be pure (the loop jits
    them and donates the state); the loop adds `grad_norm/<group>`, `update_norm/<group>` and
    `param_norm/<group>` to the train metrics. `evaluators()` are run with an
    `fsq_jax.train.EvalContext`. Optional: `data_fn(data_config, split, batch_size, **kwargs)`,
    the task's own batches with the signature of `fsq_jax.data.build`.
    """

    config_schema: ClassVar[type]

    def init_state(self, rng: jax.Array, batch: Batch) -> TrainState: ...

    def train_step(
        self, state: TrainState, batch: Batch, rng: jax.Array
    ) -> tuple[TrainState, dict[str, jax.Array]]: ...

    def eval_step(
        self, state: TrainState, batch: Batch, rng: jax.Array
    ) -> dict[str, jax.Array]: ...

    def evaluators(self) -> Sequence[Evaluator]: ...

    def images(self, state: TrainState, batch: Batch, rng: jax.Array) -> dict[str, np.ndarray]: ...
