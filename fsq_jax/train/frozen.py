"""Frozen stages: a finished stage-I run that a stage-II task reads (MaskGIT's tokenizer, UViM's
oracle), loaded the same way for every pipeline.

The loop reads the stage's `config.json` while validating (so a wrong workdir fails before
anything is built) and hands the task a `FrozenStage`; its variables are restored from the newest
good checkpoint the first time the task asks for them, without changing the workdir.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from fsq_jax import run_dir
from fsq_jax.config_lib import ConfigError
from fsq_jax.train.checkpoint import restore_latest

# Fields added to the code after runs were saved that say how a stage is trained, not what its
# trained network computes: a run saved before them is read with the value it was trained with.
TRAINING_ONLY_FIELDS = {"grad_accum_steps": 1}


def read_frozen_config(workdir: str, field: str) -> ml_collections.ConfigDict:
    """The config of the finished run in `workdir` (with `TRAINING_ONLY_FIELDS` it lacks filled
    in); ConfigError naming `field` otherwise."""
    if not workdir or not os.path.isdir(workdir):
        raise ConfigError(f"{field} = {workdir!r}: not a directory; train that stage first "
                          "(or point the field at its workdir)")
    try:
        config = run_dir.read_config(workdir)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"{field} = {workdir!r}: {error}") from None
    task_fields = _task_fields(config)
    for name, value in TRAINING_ONLY_FIELDS.items():
        if name not in config and name in task_fields:
            config[name] = value
    return config


def _task_fields(config: ml_collections.ConfigDict) -> set[str]:
    """The top-level fields of the schema of `config.task` (empty when it cannot be found)."""
    from fsq_jax.schema import schema_fields
    from fsq_jax.train.validate import resolve_task, schema_of

    try:
        return set(schema_fields(schema_of(resolve_task(config))))
    except ConfigError:  # an unknown task: the frozen stage's own check reports it
        return set()


@dataclasses.dataclass(frozen=True)
class FrozenStage:
    """A trained run used as a fixed part of another task.

    Attributes:
      workdir: the run's directory.
      field: the config field that named it (for error messages).
      config: the run's own config (its `config.json`).
    """

    workdir: str
    field: str
    config: ml_collections.ConfigDict

    @functools.cached_property
    def restored(self) -> dict[str, Any]:
        """The newest good checkpoint as host numpy: `step`, `params`, `ema_params`,
        `model_state` (the EMA params are what evaluation of that run used)."""
        try:
            _, restored = restore_latest(self.workdir)
        except FileNotFoundError as error:
            raise ConfigError(f"{self.field} = {self.workdir!r}: {error}") from None
        return restored

    def variables(self, group: str, collections: Sequence[str] | None = None
                  ) -> dict[str, Any]:
        """Flax variables of parameter group `group`: `{"params": ..., <collections>...}`.

        Args:
          group: the parameter group of the frozen model (e.g. "generator", "model").
          collections: the `model_state` collections to include (None: all of them).
        """
        params = self.restored["ema_params"] or self.restored["params"]
        if group not in params:
            raise ConfigError(f"{self.field} = {self.workdir!r}: holds parameter groups "
                              f"{sorted(params)}, not {group!r}; is it the right kind of run?")
        model_state = dict(self.restored.get("model_state") or {})
        if collections is not None:
            model_state = {k: v for k, v in model_state.items() if k in collections}
        return {"params": params[group], **model_state}


def frozen_from_variables(config: ml_collections.ConfigDict, group: str,
                          variables: Mapping[str, Any], field: str = "frozen stage"
                          ) -> FrozenStage:
    """A `FrozenStage` of variables already in memory (a stage-II checkpoint carries its frozen
    stage-I variables; tests build one by hand): `variables(group)` returns them."""
    variables = dict(variables)
    stage = FrozenStage("", field, config)
    stage.__dict__["restored"] = {"params": {group: variables.pop("params")}, "ema_params": {},
                                  "model_state": variables}
    return stage


def load_frozen(workdir: str, field: str) -> FrozenStage:
    """The frozen stage in `workdir` (config read now, variables on first use)."""
    return FrozenStage(workdir, field, read_frozen_config(workdir, field))
