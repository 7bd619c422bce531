"""Helpers for config files, and the schemas the loop checks configs against.

Config files (configs/…) are data: they import `ml_collections` and this package only. It gives
them the one preset language (`parse_arg`), the sections `fsq_jax` reads with their defaults
(`loop`, `data`, `optimizer`) and the quantizer presets table (`quantizer`).
"""

from fsq_jax.config_lib.arg import Choice, parse_arg
from fsq_jax.config_lib.fields import changed_fields, flatten, has_field, set_field
from fsq_jax.config_lib.files import load
from fsq_jax.config_lib.quantizers import RECOMMENDED_LEVELS, fsq_levels, names, quantizer, sized
from fsq_jax.config_lib.sections import (
    DataConfig,
    LoopConfig,
    OptimizerConfig,
    data,
    loop,
    optimizer,
)
from fsq_jax.schema import ConfigError, FieldError, check, defaults, require

__all__ = [
    "RECOMMENDED_LEVELS",
    "Choice",
    "ConfigError",
    "DataConfig",
    "FieldError",
    "LoopConfig",
    "OptimizerConfig",
    "changed_fields",
    "check",
    "data",
    "defaults",
    "flatten",
    "fsq_levels",
    "has_field",
    "load",
    "loop",
    "names",
    "optimizer",
    "parse_arg",
    "quantizer",
    "require",
    "set_field",
    "sized",
]
