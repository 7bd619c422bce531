"""Conversions between uint8 images and the [-1, 1] floats every model in the project reads, the
picture grids the loop writes, and image files read the way evaluation reads them."""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def to_float(images: jax.Array) -> jax.Array:
    """uint8 [..., 3] in [0, 255] -> float32 in [-1, 1]."""
    return jnp.asarray(images).astype(jnp.float32) / 127.5 - 1.0


def to_uint8(images: jax.Array) -> jax.Array:
    """float [..., 3] in ~[-1, 1] -> uint8 in [0, 255] (rounded, clipped)."""
    return jnp.clip(jnp.round((jnp.asarray(images) + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def image_grid(images: np.ndarray, rows: int, min_size: int = 0) -> np.ndarray:
    """uint8 [N, H, W, C] -> one uint8 picture [rows * s * H, cols * s * W, C], row-major
    (N = rows * cols); images smaller than `min_size` pixels are enlarged by pixel repetition
    (factor s) so a person can see them."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    if rows < 1 or n % rows:
        raise ValueError(f"image_grid: {n} images do not fill {rows} rows")
    cols = n // rows
    grid = images.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(
        rows * h, cols * w, c)
    scale = max(1, min_size // max(h, 1))
    return np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)


def load_images(paths: Sequence[str | os.PathLike], size: int) -> np.ndarray:
    """Image files -> uint8 [N, size, size, 3]: each decoded as RGB, centre-cropped to a square
    and resized (antialiased bicubic), as the data pipeline prepares evaluation images.

    Raises:
      fsq_jax.data.DataError: a file that cannot be read or decoded (naming it).
    """
    from fsq_jax.data import folder, preprocess

    images = [preprocess.square_resize({"image": folder.read_image(os.fspath(path))}, size,
                                       "center", flip=False)["image"] for path in paths]
    return np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
