"""The one training loop every task runs on: validation, state, optimisers, sharding, checkpoints.

A task (see `Task`) supplies the model-specific pure functions; `train_and_evaluate` validates the
config once, builds the task (and its frozen stage), and owns the mesh, jit, EMA, checkpoints,
metrics, progress, evaluation, preemption and the NaN guard.
"""

from fsq_jax.config_lib import ConfigError
from fsq_jax.run_dir import read_config
from fsq_jax.train import optim, sharding
from fsq_jax.train.checkpoint import (
    Checkpointer,
    CheckpointError,
    CheckpointReader,
    CheckpointSaveError,
    restore_latest,
)
from fsq_jax.train.evaluation import EvalContext, Evaluator, run_sharded
from fsq_jax.train.frozen import FrozenStage, frozen_from_variables, load_frozen
from fsq_jax.train.loop import (
    NonFiniteError,
    build_task,
    evaluate,
    train_and_evaluate,
)
from fsq_jax.train.state import TrainState
from fsq_jax.train.task import Batch, Task
from fsq_jax.train.validate import resolve_task, validate
from fsq_jax.train.workdir import WorkdirError, WorkdirLock, WorkdirLockedError, error_line

__all__ = [
    "Batch",
    "CheckpointError",
    "CheckpointReader",
    "CheckpointSaveError",
    "Checkpointer",
    "ConfigError",
    "EvalContext",
    "Evaluator",
    "FrozenStage",
    "NonFiniteError",
    "Task",
    "TrainState",
    "WorkdirError",
    "WorkdirLock",
    "WorkdirLockedError",
    "build_task",
    "error_line",
    "evaluate",
    "frozen_from_variables",
    "load_frozen",
    "optim",
    "read_config",
    "resolve_task",
    "restore_latest",
    "run_sharded",
    "sharding",
    "train_and_evaluate",
    "validate",
]
