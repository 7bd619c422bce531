"""Parameters from a published `.npz` checkpoint, through an explicit table of names and shapes.

Public weights (ViT on ImageNet-21k, torchvision's ResNet-50) use their own names and layouts.
A table maps each checkpoint array to one of our parameters and states the shape it must have,
so a wrong file fails at start-up naming the first mismatch instead of training from noise.
"""

from __future__ import annotations

import dataclasses
import os
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import traverse_util


class CheckpointMismatchError(ValueError):
    """A checkpoint file whose names or shapes do not fit the model."""


class ConversionError(CheckpointMismatchError):
    """Our config cannot hold a published model (the message names the field to change)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One parameter: checkpoint array `source` -> our parameter `target` ('/'-joined path).

    `source_shape` is the shape the array must have (None: any size on that axis, for arrays
    that `transform` resamples); `transform` maps the checked array to the target's layout.
    """

    source: str
    source_shape: tuple[int | None, ...]
    target: str
    transform: Callable[[np.ndarray], np.ndarray] | None = None


@dataclasses.dataclass(frozen=True)
class Stacked:
    """Checkpoint arrays `sources` (each of `source_shape`) stacked along `axis` into `target`
    (e.g. separate query / key / value kernels into one fused projection)."""

    sources: tuple[str, ...]
    source_shape: tuple[int, ...]
    target: str
    axis: int


def read_npz(path: str, origin: str) -> dict[str, np.ndarray]:
    """All arrays of an `.npz` file by name; `origin` (e.g. the config field) prefixes errors."""
    if not path or not os.path.isfile(path):
        raise CheckpointMismatchError(f"{origin}: no such file {path!r}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointMismatchError(
            f"{origin}: {path!r} is not a readable .npz ({error})") from error


def _shape_text(shape: Iterable[int | None]) -> str:
    return "(" + ", ".join("*" if size is None else str(size) for size in shape) + ")"


def _shape_fits(shape: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    return len(shape) == len(expected) and all(
        want is None or have == want for have, want in zip(shape, expected))


def map_arrays(arrays: Mapping[str, np.ndarray], entries: Sequence[Entry], origin: str, *,
               ignore: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Applies the table: {target: array}, or CheckpointMismatchError naming the first problem.

    Entries are checked in order (a missing array, then a wrong shape); afterwards every array
    no entry uses must match one of the `ignore` regexes (re.fullmatch), else it is named as
    unexpected: a deeper or differently built network is refused, not silently truncated.
    """
    mapped = {}
    for entry in entries:
        if entry.source not in arrays:
            raise CheckpointMismatchError(
                f"{origin}: missing array {entry.source!r} (for {entry.target}); the file has "
                f"{len(arrays)} arrays, e.g. {sorted(arrays)[:3]}")
        array = np.asarray(arrays[entry.source])
        if not _shape_fits(array.shape, entry.source_shape):
            raise CheckpointMismatchError(
                f"{origin}: array {entry.source!r} has shape {_shape_text(array.shape)}, "
                f"expected {_shape_text(entry.source_shape)} (for {entry.target})")
        mapped[entry.target] = entry.transform(array) if entry.transform else array
    used = {entry.source for entry in entries}
    patterns = [re.compile(pattern) for pattern in ignore]
    unexpected = sorted(key for key in arrays
                        if key not in used and not any(p.fullmatch(key) for p in patterns))
    if unexpected:
        raise CheckpointMismatchError(
            f"{origin}: unexpected array {unexpected[0]!r} ({len(unexpected)} arrays the model "
            "has no place for)")
    return mapped


def assign(params: Any, values: Mapping[str, np.ndarray], origin: str) -> Any:
    """`params` (nested dict) with the leaves at the '/'-joined paths of `values` replaced.

    Values keep their bits (cast to the leaf's dtype, a no-op for float32 into float32); a path
    that is not a parameter, or a shape that differs, is a CheckpointMismatchError naming it.
    """
    flat = traverse_util.flatten_dict(dict(params), sep="/")
    for path, value in values.items():
        if path not in flat:
            raise CheckpointMismatchError(f"{origin}: the model has no parameter {path!r}")
        if tuple(value.shape) != tuple(flat[path].shape):
            raise CheckpointMismatchError(
                f"{origin}: {path} would get shape {tuple(value.shape)}, the model's is "
                f"{tuple(flat[path].shape)}")
        flat[path] = jnp.asarray(value, dtype=flat[path].dtype)
    return traverse_util.unflatten_dict(flat, sep="/")


def apply_table(arrays: Mapping[str, np.ndarray], table: Sequence[Entry | Stacked], origin: str,
                *, ignore: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """`map_arrays` for a table whose rows may also be `Stacked` (several arrays -> one)."""
    entries: list[Entry] = []
    for row in table:
        if isinstance(row, Stacked):
            entries += [Entry(source, row.source_shape, f"{row.target}#{j}")
                        for j, source in enumerate(row.sources)]
        else:
            entries.append(row)
    mapped = map_arrays(arrays, entries, origin, ignore=ignore)
    for row in table:
        if isinstance(row, Stacked):
            parts = [mapped.pop(f"{row.target}#{j}") for j in range(len(row.sources))]
            mapped[row.target] = np.stack(parts, axis=row.axis)
    return mapped


def assign_all(params: Any, values: Mapping[str, np.ndarray], origin: str) -> Any:
    """`assign` that must replace every leaf: a converted model keeps nothing random.

    `params` may hold arrays or `jax.ShapeDtypeStruct`s (from `jax.eval_shape`); the first
    parameter `values` leaves empty is named (a part the published model does not have).
    """
    flat = traverse_util.flatten_dict(dict(params), sep="/")
    for path in flat:
        if path not in values:
            raise CheckpointMismatchError(
                f"{origin}: nothing in the checkpoint for our parameter {path!r} (shape "
                f"{_shape_text(flat[path].shape)}); the config builds a part the published "
                "model does not have")
    return assign(params, values, origin)
