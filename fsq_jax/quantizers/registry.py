"""Builds quantizers by name from a config, so swapping FSQ for VQ is a config change.

`default_config(name)` gives every field a non-None default; `build(config)` validates the values
(ValueError naming the field) and returns the Linen module; `code_dim(config)` is the last dimension
the quantizer expects, which the model projects its encoder output to.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import ml_collections
import numpy as np

from fsq_jax.quantizers.fsq import FSQ, ResidualFSQ, validate_levels
from fsq_jax.quantizers.lfq import LFQ
from fsq_jax.quantizers.vq import VQ

NAMES = ("fsq", "vq", "residual_fsq", "lfq")


def _fsq_fields() -> dict[str, Any]:
    return {
        "levels": (8, 5, 5, 5),
        "shift": "tan",
        "eps": 1e-3,
        "check_indices": False,
        "compute_metrics": True,
    }


def _vq_fields() -> dict[str, Any]:
    return {
        "codebook_size": 1024,
        "dim": 256,
        "beta": 0.25,
        "use_ema": False,
        "ema_decay": 0.99,
        "ema_epsilon": 1e-5,
        "l2_normalize": False,
        "reseed_dead_codes": False,
        "split_codes": False,
        "dead_code_threshold": 0.01,
        "usage_decay": 0.99,
        "usage_init": 1.0,
        "split_perturbation": 1e-3,
        "entropy_weight": 0.0,
        "entropy_temperature": 0.01,
        "kmeans_init": False,
        "kmeans_iterations": 10,
        "check_indices": False,
        "compute_metrics": True,
    }


def _residual_fsq_fields() -> dict[str, Any]:
    return {**_fsq_fields(), "num_stages": 2, "scaling": "levels", "scale_factor": 0.25}


def _lfq_fields() -> dict[str, Any]:
    return {
        "dim": 10,
        "entropy_weight": 0.1,
        "sample_entropy_weight": 1.0,
        "codebook_entropy_weight": 1.0,
        "commitment_weight": 0.25,
        "inv_temperature": 100.0,
        "max_exact_entropy_dim": 12,
        "check_indices": False,
        "compute_metrics": True,
    }


_DEFAULTS = {
    "fsq": _fsq_fields,
    "vq": _vq_fields,
    "residual_fsq": _residual_fsq_fields,
    "lfq": _lfq_fields,
}
_CLASSES = {"fsq": FSQ, "vq": VQ, "residual_fsq": ResidualFSQ, "lfq": LFQ}


def default_config(name: str = "fsq") -> ml_collections.ConfigDict:
    """The full config of quantizer `name` (one of NAMES), every field with a non-None default."""
    if name not in _DEFAULTS:
        raise ValueError(f"quantizer name must be one of {NAMES}, got {name!r}")
    return ml_collections.ConfigDict({"name": name, **_DEFAULTS[name]()})


def _fields(config: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(config, ml_collections.ConfigDict | ml_collections.FrozenConfigDict):
        values = config.to_dict()
    elif isinstance(config, dict):
        values = dict(config)
    else:
        raise ValueError(f"quantizer config must be a ConfigDict or dict, got {type(config)}")
    name = values.pop("name", None)
    if name not in _DEFAULTS:
        raise ValueError(f"quantizer config.name must be one of {NAMES}, got {name!r}")
    known = _DEFAULTS[name]()
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} for quantizer {name!r}")
    for key, value in values.items():
        _check_type(name, key, value, known[key])
    return name, {**known, **values}


def _check_type(name: str, key: str, value: Any, default: Any) -> None:
    """Raises ValueError naming `key` when `value` has the wrong kind for that field."""
    if isinstance(default, bool):
        ok = isinstance(value, bool | np.bool_)
    elif isinstance(default, int):
        ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(
            value, bool
        )
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:  # sequences (levels) are validated by the module itself
        ok = True
    if not ok:
        raise ValueError(
            f"quantizer {name!r} field {key!r} must be {type(default).__name__}, got {value!r}"
        )


def build(config: Any) -> nn.Module:
    """Builds the quantizer named by `config.name`; ValueError on unknown names or bad values."""
    name, fields = _fields(config)
    for key, value in fields.items():
        if isinstance(value, list):
            fields[key] = tuple(value)
    return _CLASSES[name](**fields)


def code_dim(config: Any) -> int:
    """The last dimension of `z` the configured quantizer expects."""
    name, fields = _fields(config)
    if name in ("fsq", "residual_fsq"):
        return len(validate_levels(fields["levels"]))
    if name in ("vq", "lfq"):
        return int(fields["dim"])
    raise ValueError(f"quantizer config.name must be one of {NAMES}, got {name!r}")


def codebook_size(config: Any) -> int:
    """Codebook size (per codebook, for residual variants) of the configured quantizer."""
    name, fields = _fields(config)
    if name in ("fsq", "residual_fsq"):
        return math.prod(validate_levels(fields["levels"]))
    if name == "vq":
        return int(fields["codebook_size"])
    return 2 ** int(fields["dim"])
