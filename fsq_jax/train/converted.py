"""A run directory for weights trained elsewhere (a published checkpoint), as if we had trained it.

`write_run` stores the config as `config.json` and the state as one verified checkpoint at step
`config.total_steps`, so `scripts/evaluate.py`, `scripts/sample.py` and stage-II tasks (frozen
stages) read it exactly like a finished run of ours, and the loop would not train it further.
"""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp
import ml_collections

from fsq_jax import run_dir
from fsq_jax.train.checkpoint import Checkpointer
from fsq_jax.train.workdir import WorkdirLock


def write_run(workdir: str, config: ml_collections.ConfigDict, state: Any) -> str:
    """Writes `workdir/config.json` and `state` (a `TrainState`) as its only checkpoint.

    Returns the checkpoint step. Raises FileExistsError when `workdir` already holds a run
    (a config.json or checkpoints): converted weights never overwrite anything.
    """
    checkpoints = os.path.join(workdir, run_dir.CHECKPOINT_DIR)
    if os.path.exists(os.path.join(workdir, run_dir.CONFIG_FILE)) or (
            os.path.isdir(checkpoints) and os.listdir(checkpoints)):
        raise FileExistsError(f"{workdir!r} already holds a run; choose another output "
                              "directory")
    os.makedirs(workdir, exist_ok=True)
    step = int(config.total_steps)
    checkpointer = Checkpointer(checkpoints, keep=1, async_save=False, lock=WorkdirLock(workdir))
    try:
        checkpointer.save(step, state.replace(step=jnp.asarray(step, state.step.dtype)))
        checkpointer.wait()
    finally:
        checkpointer.close()
    run_dir.write_json(os.path.join(workdir, run_dir.CONFIG_FILE), run_dir.config_json(config))
    return step
