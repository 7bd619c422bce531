"""Defaults of the fields the shared training loop reads; experiment configs start from these.

Every field has a non-None default so any of them can be overridden with `--config.field=value`.
"""

from __future__ import annotations

import ml_collections

NAN_POLICIES = ("stop", "skip")


def default_config() -> ml_collections.ConfigDict:
    """The loop's fields (see docs/architecture.md) with their defaults."""
    return ml_collections.ConfigDict(
        {
            "task": "fsq_jax.tasks.autoencoder:AutoencoderTask",
            "seed": 0,
            "total_steps": 1000,
            "batch_size": 32,
            "eval_batch_size": 32,
            "log_every": 50,  # 0 = only at the end
            "eval_every": 500,
            "images_every": 500,
            "checkpoint_every": 500,
            "keep_checkpoints": 3,
            "async_checkpoints": True,
            "ema_decay": 0.0,
            "nan_policy": "stop",  # stop | skip
            "fsdp": False,
            "eval_steps": 4,
            "data": data_defaults(),
        }
    )


def data_defaults() -> ml_collections.ConfigDict:
    """`fsq_jax.data.default_config()`, the data section every config carries."""
    from fsq_jax import data

    return data.default_config()
