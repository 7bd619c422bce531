"""The one training loop every task runs on: state, optimisers, sharding, checkpoints, logging.

A task (see `Task`) supplies the model-specific pure functions; `train_and_evaluate` owns the mesh,
jit, EMA, checkpoints, metrics, progress, evaluation, preemption and the NaN guard.
"""

from fsq_jax.train import optim, sharding
from fsq_jax.train.checkpoint import (
    Checkpointer,
    CheckpointError,
    CheckpointReader,
    CheckpointSaveError,
)
from fsq_jax.train.config import default_config
from fsq_jax.train.config_check import ConfigError, validate_config
from fsq_jax.train.loop import (
    NonFiniteError,
    evaluate,
    load_task,
    read_config,
    restore_latest,
    train_and_evaluate,
)
from fsq_jax.train.state import TrainState
from fsq_jax.train.task import Batch, Evaluator, Task
from fsq_jax.train.workdir import WorkdirError, WorkdirLock, WorkdirLockedError, error_line

__all__ = [
    "Batch",
    "CheckpointError",
    "CheckpointReader",
    "CheckpointSaveError",
    "Checkpointer",
    "ConfigError",
    "Evaluator",
    "NonFiniteError",
    "Task",
    "TrainState",
    "WorkdirError",
    "WorkdirLock",
    "WorkdirLockedError",
    "default_config",
    "error_line",
    "evaluate",
    "load_task",
    "optim",
    "read_config",
    "restore_latest",
    "sharding",
    "train_and_evaluate",
    "validate_config",
]
