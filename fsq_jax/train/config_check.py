"""Config validation before anything is compiled: unknown keys, wrong types, impossible values.

Each problem raises `ConfigError` with one line naming the field and what is allowed, so a typo in
a config file or a `--config.x=y` override fails in a second instead of after compilation.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from fsq_jax.train import optim
from fsq_jax.train.config import NAN_POLICIES

_TASK_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_LOOP_SECTIONS = ("data",)


class ConfigError(ValueError):
    """A config field has an unknown name, a wrong type or an impossible value."""


def _type_name(value: Any) -> str:
    return type(value).__name__


def _compatible(value: Any, reference: Any) -> bool:
    if isinstance(reference, bool):
        return isinstance(value, bool)
    if isinstance(reference, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(reference, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(reference, str):
        return isinstance(value, str)
    if isinstance(reference, tuple | list):
        return isinstance(value, tuple | list)
    return True


def check_against(
    config: Any, reference: Any, prefix: str = "config", skip: tuple[str, ...] = ()
) -> None:
    """Rejects keys of `config` absent from `reference` and values of an incompatible type.

    Sections named in `skip` are accepted as they are (they are checked elsewhere).
    """
    if not isinstance(config, Mapping | ml_collections.ConfigDict):
        raise ConfigError(f"{prefix} must be a config section, got {_type_name(config)}")
    allowed = sorted(reference.keys())
    for key in config:
        field = f"{prefix}.{key}"
        if key not in reference:
            raise ConfigError(f"{field}: unknown field; allowed fields: {', '.join(allowed)}")
        if key in skip:
            continue
        value, ref = config[key], reference[key]
        if isinstance(ref, Mapping | ml_collections.ConfigDict):
            check_against(value, ref, field)
        elif ref is not None and not _compatible(value, ref):
            raise ConfigError(
                f"{field} = {value!r}: expected {_type_name(ref)} (like {ref!r}), "
                f"got {_type_name(value)}"
            )


def _positive(config: Any, field: str, minimum: int = 1) -> None:
    value = config[field]
    if value < minimum:
        raise ConfigError(f"config.{field} = {value!r}: must be >= {minimum}")


def _check_loop(config: Any, loop_defaults: ml_collections.ConfigDict, num_devices: int) -> None:
    for key in loop_defaults:
        if key not in config:
            raise ConfigError(
                f"config.{key}: missing; the loop needs it (default {loop_defaults[key]!r})"
            )
        if key not in _LOOP_SECTIONS and not _compatible(config[key], loop_defaults[key]):
            raise ConfigError(
                f"config.{key} = {config[key]!r}: expected {_type_name(loop_defaults[key])}, "
                f"got {_type_name(config[key])}"
            )
    if not _TASK_PATTERN.match(config.task):
        raise ConfigError(f"config.task = {config.task!r}: must be 'module.path:ClassName'")
    for field in ("total_steps", "batch_size", "eval_batch_size", "keep_checkpoints"):
        _positive(config, field)
    for field in (
        "log_every",
        "eval_every",
        "images_every",
        "checkpoint_every",
        "eval_steps",
        "seed",
    ):
        _positive(config, field, minimum=0)
    if not 0.0 <= config.ema_decay < 1.0:
        raise ConfigError(
            f"config.ema_decay = {config.ema_decay!r}: must be in [0, 1) (0 disables the EMA)"
        )
    if config.nan_policy not in NAN_POLICIES:
        raise ConfigError(
            f"config.nan_policy = {config.nan_policy!r}: must be one of "
            f"{', '.join(repr(p) for p in NAN_POLICIES)}"
        )
    for field in ("batch_size", "eval_batch_size"):
        if config[field] % num_devices:
            raise ConfigError(
                f"config.{field} = {config[field]}: must be divisible by the number of devices "
                f"({num_devices})"
            )


def _check_data(config: Any) -> None:
    from fsq_jax.train.config import data_defaults

    check_against(config.data, data_defaults(), "config.data")
    source = config.data.get("source", "")
    if isinstance(source, str) and source.startswith("folder:"):
        path = source[len("folder:") :]
        if not os.path.isdir(path):
            raise ConfigError(f"config.data.source = {source!r}: no such directory {path!r}")
    from fsq_jax import data

    try:
        data.validate_config(config.data)
    except ValueError as e:
        raise ConfigError(
            f"config.{e}" if str(e).startswith("data.") else f"config.data: {e}"
        ) from None


def _check_quantizer(config: Any) -> None:
    from fsq_jax import quantizers

    section = config.quantizer
    name = section.get("name") if hasattr(section, "get") else None
    if name not in quantizers.NAMES:
        raise ConfigError(
            f"config.quantizer.name = {name!r}: must be one of {', '.join(quantizers.NAMES)}"
        )
    check_against(section, quantizers.default_config(name), "config.quantizer")
    try:
        quantizers.build(section)
        size = quantizers.codebook_size(section)
    except ValueError as e:
        raise ConfigError(f"config.quantizer: {e}") from None
    if size >= 2**31:
        raise ConfigError(
            f"config.quantizer: codebook size {size} does not fit int32 indices "
            f"(must be < 2**31); use fewer or smaller levels"
        )


def _check_optimizers(config: Any) -> None:
    sections = []
    if "optimizer" in config:
        sections.append(("config.optimizer", config.optimizer))
    if "optimizers" in config:
        sections.extend((f"config.optimizers.{k}", v) for k, v in config.optimizers.items())
    for prefix, section in sections:
        check_against(section, optim.default_config(), prefix)
        try:
            optim.build(section, config.total_steps)
        except ValueError as e:
            message = str(e)
            if message.startswith("optimizer."):
                message = message[len("optimizer.") :]
            raise ConfigError(f"{prefix}.{message}") from None


def validate_config(
    config: ml_collections.ConfigDict, task: Any = None, num_devices: int | None = None
) -> None:
    """Checks `config` for the loop and, through its optional hooks, for `task`.

    `num_devices` (default: all devices) must divide the batch sizes.

    Raises:
      ConfigError: one line naming the first bad field and the allowed values.
    """
    from fsq_jax.train.config import default_config

    if not isinstance(config, ml_collections.ConfigDict | ml_collections.FrozenConfigDict):
        raise ConfigError(f"config must be an ml_collections.ConfigDict, got {_type_name(config)}")
    loop_defaults = default_config()
    _check_loop(config, loop_defaults, jax.device_count() if num_devices is None else num_devices)
    reference_fn = getattr(task, "reference_config", None)
    if callable(reference_fn):
        reference = reference_fn()
        for key in loop_defaults:
            if key not in reference:
                reference[key] = loop_defaults[key]
        check_against(config, reference, skip=("data", "quantizer"))
    _check_data(config)
    if "quantizer" in config:
        _check_quantizer(config)
    _check_optimizers(config)
    check = getattr(task, "check_config", None)
    if callable(check):
        try:
            check(config)
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(str(e)) from None
