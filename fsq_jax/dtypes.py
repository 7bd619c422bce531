"""Compute dtypes a config may name: models keep float32 params and compute in `DTYPES[name]`."""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp

DTypeName = Literal["float32", "bfloat16"]
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
