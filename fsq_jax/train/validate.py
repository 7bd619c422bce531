"""One validation pass over an experiment config, before anything is built or compiled.

The task class named by `config.task` declares its config's schema (`config_schema`, a dataclass
extending `fsq_jax.config_lib.LoopConfig`); `validate` checks the whole config against it (unknown
and missing fields, types, impossible values), then what needs the world around the run: the
device count, each optimiser's warm-up against the run's length, an image folder's split
subfolders, and the frozen stage a stage-II task reads. Every problem is one `ConfigError` line
naming the field.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterator
from typing import Any

import ml_collections
from absl import logging

from fsq_jax.config_lib import ConfigError, LoopConfig, OptimizerConfig, check


def resolve_task(config: ml_collections.ConfigDict) -> type:
    """The task class `config.task` ("module.path:ClassName") names, imported, not built."""
    spec = config.get("task", None)
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ConfigError(f"config.task = {spec!r}: must be 'module.path:ClassName'")
    module_name, class_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ConfigError(f"config.task = {spec!r}: cannot import module {module_name!r} ({e})"
                          ) from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ConfigError(f"config.task = {spec!r}: module {module_name!r} has no class "
                          f"{class_name!r}")
    return cls


def schema_of(task_cls: type) -> type:
    """The config schema a task class declares (the loop's own fields when it declares none)."""
    return getattr(task_cls, "config_schema", LoopConfig)


def optimizers(typed: Any, path: str = "config") -> Iterator[tuple[str, OptimizerConfig]]:
    """Every optimizer section of a checked config, with its dotted path."""
    if isinstance(typed, OptimizerConfig):
        yield path, typed
    elif dataclasses.is_dataclass(typed) and not isinstance(typed, type):
        for field in dataclasses.fields(typed):
            yield from optimizers(getattr(typed, field.name), f"{path}.{field.name}")
    elif isinstance(typed, dict):
        for key, value in typed.items():
            yield from optimizers(value, f"{path}.{key}")


def _check_world(typed: Any, num_devices: int) -> None:
    for field in ("batch_size", "eval_batch_size"):
        value = getattr(typed, field)
        if value % num_devices:
            raise ConfigError(f"config.{field} = {value}: must be divisible by the number of "
                              f"devices ({num_devices})")
    for path, opt in optimizers(typed):
        if opt.warmup_steps >= typed.total_steps:
            logging.warning("%s.warmup_steps = %d is not shorter than total_steps = %d: the "
                            "warm-up is shortened to %d steps (10%% of the run)", path,
                            opt.warmup_steps, typed.total_steps, typed.total_steps // 10)


def _check_image_folder(data: Any) -> None:
    """An image folder must have a validation split that is not its training images."""
    kind, _, root = data.source.partition(":")
    if kind != "folder":
        return
    from fsq_jax.data import folder

    try:
        folder.check_layout(root, data.folder_holdout)
    except folder.FolderLayoutError as error:
        raise ConfigError(f"config.data.source = {data.source!r}: {error}") from None


def validate(config: ml_collections.ConfigDict, task_cls: type | None = None,
             num_devices: int = 1) -> Any:
    """Checks `config` for the loop and its task; returns the typed (dataclass) config.

    Args:
      config: a complete experiment config.
      task_cls: the task class (default: the one `config.task` names).
      num_devices: devices the batch sizes must split over.

    Raises:
      ConfigError: one line naming the first bad field and what is allowed.
    """
    if not isinstance(config, ml_collections.ConfigDict | ml_collections.FrozenConfigDict):
        raise ConfigError(f"config must be an ml_collections.ConfigDict, got "
                          f"{type(config).__name__}")
    task_cls = resolve_task(config) if task_cls is None else task_cls
    typed = check(config, schema_of(task_cls), "config")
    _check_world(typed, num_devices)
    _check_image_folder(typed.data)
    field = getattr(task_cls, "frozen_stage_field", None)
    if field:
        from fsq_jax.train.frozen import read_frozen_config

        frozen_config = read_frozen_config(config[field], f"config.{field}")
        try:
            task_cls.check_frozen(typed, frozen_config)
        except ConfigError:
            raise
        except ValueError as error:
            raise ConfigError(f"config.{field} = {config[field]!r}: {error}") from None
    return typed
