"""What running the same command again does to a workdir: a finished run is kept as it is, a
changed config is refused, and a start that fails leaves the workdir as it found it.

Rerunning a command is how schedulers requeue and how users resume, so it must be safe. A run
that reached `total_steps` returns its stored results and writes nothing. A run whose stored
`config.json` differs from the new config in a field that decides the model, the data or the
optimisation would continue one experiment's checkpoints as another (a change that keeps every
shape, e.g. FSQ levels (8, 5, 5, 5) -> (5, 5, 5, 8), restores without complaint), so it is
refused in one line naming the fields, unless the caller passes `allow_config_change`. Fields
that say how long to train, how often to log, evaluate or save, what to measure and how to read
the data (`RESUMABLE_FIELDS`) may change on resume.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from fsq_jax import run_dir
from fsq_jax.config_lib import ConfigError, flatten
from fsq_jax.train.checkpoint import CORRUPT_DIR
from fsq_jax.train.workdir import WorkdirError

# Fields (dotted; a section name covers the whole section) that may differ between a run's
# config.json and the config that resumes it: none changes what the checkpoints hold or how the
# next update is computed from them.
RESUMABLE_FIELDS = (
    "total_steps",  # train on (or stop earlier)
    "log_every",
    "eval_every",
    "images_every",
    "checkpoint_every",
    "keep_checkpoints",
    "async_checkpoints",
    "fsdp",  # where the state lives, not what it is
    "nan_policy",
    "max_consecutive_skips",
    "eval_steps",
    "eval_batch_size",
    "evaluators",  # what is measured, not what is trained
    "data.read_threads",
    "data.prefetch_batches",
    "data.tfds_data_dir",  # the same dataset, moved
    "data.on_corrupt",  # "fail" would have stopped where "skip" goes on
    "data.max_pixels",
    # What the backward pass keeps (benchmarks/memory.py): memory, not the model; runs saved
    # before the field have none, which is "none".
    "model.remat",
    "stage2.remat",
)
# The resumable fields that change what a finished run's results measure.
EVALUATION_FIELDS = ("eval_steps", "eval_batch_size", "evaluators")


class ConfigChangedError(ConfigError):
    """The workdir holds a run of another config (one line naming the differing fields).

    `changed`: the differing fields with both values, e.g. "config.seed 0 -> 1".
    """

    def __init__(self, message: str, changed: str = ""):
        super().__init__(message)
        self.changed = changed


def _covered(field: str, patterns: Sequence[str]) -> bool:
    return any(field == p or field.startswith(p + ".") for p in patterns)


def stored_config(workdir: str) -> dict[str, Any] | None:
    """The run's `config.json` as JSON, None when there is none.

    Raises:
      ConfigChangedError: config.json exists but cannot be read (so no one can tell which
        config its checkpoints belong to).
    """
    path = os.path.join(workdir, run_dir.CONFIG_FILE)
    if not os.path.exists(path):
        return None
    stored = run_dir.read_json(path)
    if not isinstance(stored, dict):
        raise ConfigChangedError(
            f"{path} is unreadable or not a config, so this run's config cannot be checked "
            "against it: restore it, delete it to resume under this config, or use a new workdir")
    return stored


def config_changes(stored: Mapping[str, Any], config: ml_collections.ConfigDict
                   ) -> dict[str, tuple[Any, Any]]:
    """`{dotted field: (stored value, new value)}` of the fields both configs have and that
    differ (a field only one of them has was added or removed by a code change: not a change of
    the experiment)."""
    old, new = flatten(stored), flatten(run_dir.config_json(config))
    return {key: (old[key], new[key]) for key in sorted(old.keys() & new.keys())
            if old[key] != new[key]}


def _describe(changes: Mapping[str, tuple[Any, Any]], limit: int = 4) -> str:
    shown = [f"config.{key} {old!r} -> {new!r}"
             for key, (old, new) in list(changes.items())[:limit]]
    more = len(changes) - limit
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def has_history(workdir: str) -> bool:
    """Whether `workdir` holds something a run would continue from: results, a committed
    checkpoint, or steps set aside as corrupt. (A run that failed before its first checkpoint
    left nothing to mix with: a new config simply starts afresh there.)"""
    if os.path.exists(os.path.join(workdir, run_dir.RESULTS_FILE)):
        return True
    for name in (run_dir.CHECKPOINT_DIR, CORRUPT_DIR):
        try:
            if any(entry.split("-")[0].isdigit()
                   for entry in os.listdir(os.path.join(workdir, name))):
                return True
        except OSError:
            continue
    return False


def check_config(config: ml_collections.ConfigDict, workdir: str,
                 allow_config_change: bool = False) -> dict[str, tuple[Any, Any]]:
    """Refuses to continue the run in `workdir` under a config that changes the experiment.

    Returns every change (resumable ones, and the others when `allow_config_change`), for the
    caller to log; nothing when the workdir has no history (`has_history`).

    Raises:
      ConfigChangedError: config.json differs in a field outside `RESUMABLE_FIELDS` (and
        `allow_config_change` is False), or is unreadable.
    """
    if not has_history(workdir):
        return {}
    stored = stored_config(workdir)
    if stored is None:
        return {}
    changes = config_changes(stored, config)
    blocking = {k: v for k, v in changes.items() if not _covered(k, RESUMABLE_FIELDS)}
    if blocking and not allow_config_change:
        changed = _describe(blocking)
        raise ConfigChangedError(
            f"{changed}: {workdir} holds a run of another config (its {run_dir.CONFIG_FILE}); "
            "resuming its checkpoints under this one would mix two experiments: use a new "
            "workdir, or resume anyway with --allow_config_change (allow_config_change=True)",
            changed)
    return changes


def finished_results(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any] | None:
    """The stored results of `workdir` when it holds a finished run of `config`, else None.

    Finished: `results.json` has `step >= config.total_steps`, and `config.json` differs from
    `config` at most in `RESUMABLE_FIELDS`.
    """
    results = run_dir.read_json(os.path.join(workdir, run_dir.RESULTS_FILE))
    if not isinstance(results, dict) or not isinstance(results.get("step"), int):
        return None
    if results["step"] < int(config.total_steps):
        return None
    try:
        stored = stored_config(workdir)
    except ConfigChangedError:
        return None
    if stored is None or any(not _covered(k, RESUMABLE_FIELDS)
                             for k in config_changes(stored, config)):
        return None
    return results


def finished_line(config: ml_collections.ConfigDict, workdir: str, results: Mapping[str, Any]
                  ) -> str:
    """The one line a rerun of a finished run prints."""
    line = (f"{workdir}: finished at step {results['step']} (total_steps = "
            f"{config.total_steps}); nothing to do, {run_dir.RESULTS_FILE} is kept: raise "
            "total_steps to train on, or run scripts/evaluate.py to evaluate it again")
    stored = stored_config(workdir) or {}
    measured = {k: v for k, v in config_changes(stored, config).items()
                if _covered(k, EVALUATION_FIELDS)}
    if measured:
        line += f" (its results were measured before {_describe(measured)})"
    return line


def make_workdir(workdir: str) -> None:
    """Creates `workdir` (and its parents); a WorkdirError in one line when that is impossible."""
    try:
        os.makedirs(workdir, exist_ok=True)
    except FileExistsError:
        raise WorkdirError(f"workdir {workdir} is a file, not a directory: choose another "
                           "--workdir") from None
    except OSError as e:
        raise WorkdirError(f"cannot create the workdir {workdir}: {e.strerror} (errno "
                           f"{e.errno}{', at ' + e.filename if e.filename else ''})") from None


class FirstStart:
    """Removes what a start that was never accepted created: the workdir (and the parents made
    for it) and its checkpoints/ directory, when they did not exist before and are empty again
    (a refused run must not leave a half-made workdir that looks like a run).

        with FirstStart(workdir) as start:
            ...  # take the lock, restore or initialise
            start.accept()  # from here on the workdir is the run's
    """

    def __init__(self, workdir: str):
        paths = [os.path.join(workdir, run_dir.CHECKPOINT_DIR)]  # innermost first
        path = os.path.abspath(workdir)
        while path != os.path.dirname(path) and not os.path.exists(path):
            paths.append(path)  # the workdir and the parents made for it
            path = os.path.dirname(path)
        self._new = [p for p in paths if not os.path.exists(p)]
        self.accepted = False

    def accept(self) -> None:
        self.accepted = True

    def __enter__(self) -> FirstStart:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.accepted:
            return
        for path in self._new:
            with contextlib.suppress(OSError):  # not empty (another run's files): keep it
                os.rmdir(path)
