"""Conversions between uint8 images and the [-1, 1] floats every model in the project reads."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def to_float(images: jax.Array) -> jax.Array:
    """uint8 [..., 3] in [0, 255] -> float32 in [-1, 1]."""
    return jnp.asarray(images).astype(jnp.float32) / 127.5 - 1.0


def to_uint8(images: jax.Array) -> jax.Array:
    """float [..., 3] in ~[-1, 1] -> uint8 in [0, 255] (rounded, clipped)."""
    return jnp.clip(jnp.round((jnp.asarray(images) + 1.0) * 127.5), 0, 255).astype(jnp.uint8)
