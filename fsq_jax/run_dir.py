"""The files of a run directory (workdir) and how they are read and written.

    workdir/config.json    the run's config, written when a run is accepted
    workdir/results.json   final metrics, written when training reaches total_steps
    workdir/checkpoints/   orbax steps
    workdir/metrics.csv, events.out.tfevents.*, images/

Reading never changes a workdir (checkpoints are read by `fsq_jax.train.restore_latest`), so
evaluation and stage II may read a run that is still training.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
# Where `scripts/evaluate.py --out <run>/evaluation.json` puts an evaluation for the tables.
EVALUATION_FILE = "evaluation.json"
CHECKPOINT_DIR = "checkpoints"


def write_json(path: str, value: Any) -> None:
    """Writes JSON atomically (a temporary file renamed into place)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    """The JSON value in `path`, or None when the file is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def results_written_since(workdir: str, since: float) -> bool:
    """Whether the run in `workdir` wrote its results at or after `since` (seconds since the
    epoch): a study that started then trained it, rather than reusing it."""
    path = os.path.join(workdir, RESULTS_FILE)
    return os.path.isfile(path) and os.path.getmtime(path) >= since


def config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as a run stores it in `config.json` (tuples become lists)."""
    return json.loads(config.to_json_best_effort())


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run saved as `workdir/config.json`.

    Raises:
      FileNotFoundError: `workdir` holds no config.json (it is not a run directory).
      ValueError: config.json is not valid JSON.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {workdir!r} is not a run directory "
                                "(a run writes config.json when it starts)")
    try:
        with open(path) as f:
            return ml_collections.ConfigDict(json_tuples(json.load(f)))
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None


def json_tuples(value: Any) -> Any:
    """JSON lists back to the tuples configs hold (so a read config equals the one written)."""
    if isinstance(value, list):
        return tuple(json_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: json_tuples(v) for k, v in value.items()}
    return value
