"""The one training loop every task runs on: state, optimisers, sharding, checkpoints, logging.

A task (see `Task`) supplies the model-specific pure functions; `train_and_evaluate` owns the mesh,
jit, EMA, checkpoints, metrics, progress, evaluation, preemption and the NaN guard.
"""

from fsq_jax.train import optim, sharding
from fsq_jax.train.checkpoint import Checkpointer, CheckpointError
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

__all__ = [
    "Batch",
    "CheckpointError",
    "Checkpointer",
    "ConfigError",
    "Evaluator",
    "NonFiniteError",
    "Task",
    "TrainState",
    "default_config",
    "evaluate",
    "load_task",
    "optim",
    "read_config",
    "restore_latest",
    "sharding",
    "train_and_evaluate",
    "validate_config",
]
