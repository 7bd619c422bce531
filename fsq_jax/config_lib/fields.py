"""Dotted field paths of a config tree: read, test, set (type-checked) and compare."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections


def has_field(config: ml_collections.ConfigDict, dotted: str) -> bool:
    """Whether `config` has the (dotted) field."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False
        node = node[part]
    return True


def set_field(config: ml_collections.ConfigDict, dotted: str, value: Any,
              what: str = "config") -> None:
    """`config.a.b = value` for `dotted = "a.b"`; ValueError naming the key if it does not exist
    or the value has the wrong type."""
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise ValueError(f"override {dotted!r}: {what} has no section {part!r}")
        node = node[part]
    if leaf not in node:
        raise ValueError(f"override {dotted!r}: {what} has no field {leaf!r}")
    try:
        node[leaf] = tuple(value) if isinstance(value, list) else value
    except TypeError as error:
        raise ValueError(f"override {dotted!r} = {value!r}: {error}") from None


def flatten(section: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections -> dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in section.items():
        if isinstance(value, Mapping) or hasattr(value, "items"):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the leaves that differ between two (JSON) trees."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        names = []
        for key in sorted(set(old) | set(new)):
            names += changed_fields(old.get(key), new.get(key), f"{prefix}{key}.")
        return names
    return [] if old == new else [prefix.rstrip(".")]
