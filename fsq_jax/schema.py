"""Config schemas: typed dataclasses that say which fields a config section has, and one checker.

The lowest layer of the config system: model code declares its sections' schemas with it, and
`fsq_jax.config_lib` (the helpers config files import) re-exports it.

A schema is a frozen dataclass whose annotations give each field's type (bool, int, float, str,
`Literal[...]`, `tuple[int, ...]`, a nested schema, a union of schemas told apart by their
`name: Literal[...]` field, `dict[str, Schema]`); its `__post_init__` rejects impossible values
with `FieldError`. `check(section, Schema, "config.model")` is the one validation pass: unknown
keys (with a "did you mean"), missing keys, wrong types and impossible values all raise
`ConfigError` with one line naming the field. Configs stay plain `ConfigDict` data; the schemas
live beside the code that reads the fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union

import ml_collections


class ConfigError(ValueError):
    """A config field has an unknown name, a wrong type or an impossible value (one line)."""


class FieldError(ValueError):
    """Raised by a schema's `__post_init__`: `field` (relative to its section) is impossible.

    `check` turns it into `ConfigError("config.<section>.<field> = <value>: <message>")`.
    """

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


def require(condition: bool, field: str, message: str) -> None:
    """Raises `FieldError(field, message)` unless `condition` holds."""
    if not condition:
        raise FieldError(field, message)


def schema_fields(schema: type) -> dict[str, Any]:
    """`{field name: resolved annotation}` of a dataclass schema (Flax modules included)."""
    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema)
            if (f.init and f.name not in ("parent", "name")) or _is_name_field(schema, f)}


def _is_name_field(schema: type, field: dataclasses.Field) -> bool:
    """`name` is a schema field only in the union members that are told apart by it."""
    return field.name == "name" and typing.get_origin(
        typing.get_type_hints(schema).get("name")) is Literal


def field_defaults(schema: type) -> dict[str, Any]:
    """`{field: default}` for the fields of `schema` that have one."""
    out = {}
    for f in dataclasses.fields(schema):
        if f.name not in schema_fields(schema):
            continue
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def defaults(schema: type) -> ml_collections.ConfigDict:
    """The schema's defaults as a config section (nested schemas with defaults included)."""
    return ml_collections.ConfigDict(_plain(field_defaults(schema)))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in _instance_items(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _instance_items(value: Any) -> list[tuple[str, Any]]:
    return [(name, getattr(value, name)) for name in schema_fields(type(value))]


def _did_you_mean(key: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _type_label(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (tuple, Sequence, typing.Sequence):
        return "a sequence"
    return getattr(annotation, "__name__", str(annotation))


def _check_value(value: Any, annotation: Any, path: str) -> Any:
    """Returns `value` converted to the annotated type (lists -> tuples), or raises."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and hasattr(annotation, "__config_check__"):
        return annotation.__config_check__(value, path)
    if dataclasses.is_dataclass(annotation):
        return check(value, annotation, path)
    if origin in (Union, types.UnionType):
        return _check_union(value, typing.get_args(annotation), path)
    if origin is dict:
        _, value_type = typing.get_args(annotation)
        if not isinstance(value, Mapping | ml_collections.ConfigDict):
            raise ConfigError(f"{path}: must be a section of named entries, got {value!r}")
        return {k: _check_value(v, value_type, f"{path}.{k}") for k, v in value.items()}
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
            raise ConfigError(f"{path} = {value!r}: must be {_type_label(annotation)}")
        return value
    if origin in (tuple, Sequence, typing.Sequence) or annotation in (tuple, Sequence):
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise ConfigError(f"{path} = {value!r}: must be a sequence (e.g. (8, 5, 5, 5))")
        args = typing.get_args(annotation)
        item = args[0] if args else Any
        return tuple(_check_value(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if annotation is Any:
        return value
    return _check_scalar(value, annotation, path)


def _check_scalar(value: Any, annotation: Any, path: str) -> Any:
    if annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise ConfigError(f"{path} = {value!r}: must be a finite number")
        value = float(value) if ok else value
    elif annotation is str:
        ok = isinstance(value, str)
    else:
        raise TypeError(f"{path}: unsupported schema annotation {annotation!r}")
    if not ok:
        raise ConfigError(f"{path} = {value!r}: must be {_type_label(annotation)}, got "
                          f"{type(value).__name__}")
    return value


def _check_union(value: Any, members: tuple[Any, ...], path: str) -> Any:
    """A union of schemas told apart by the value of their `name: Literal[...]` field."""
    by_name = {}
    for member in members:
        for name in typing.get_args(typing.get_type_hints(member)["name"]):
            by_name[name] = member
    name = value.get("name") if isinstance(value, Mapping | ml_collections.ConfigDict) else None
    if name not in by_name:
        raise ConfigError(f"{path}.name = {name!r}: must be one of "
                          f"{', '.join(repr(n) for n in by_name)}")
    return check(value, by_name[name], path)


_ABSENT = object()


def _lookup(values: Mapping[str, Any], dotted: str) -> Any:
    """The value at a dotted field path among checked values (nested schemas included)."""
    node: Any = values
    for part in dotted.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif dataclasses.is_dataclass(node) and hasattr(node, part):
            node = getattr(node, part)
        else:
            return _ABSENT
    return node


def check(section: Any, schema: type, path: str = "config") -> Any:
    """Checks a config section against a dataclass schema and returns the built dataclass.

    Every schema field must be present (configs are complete, so any field can be overridden on
    the command line); unknown fields, wrong types and values the schema's `__post_init__`
    rejects raise `ConfigError` naming the field.
    """
    if not isinstance(section, Mapping | ml_collections.ConfigDict):
        raise ConfigError(f"{path}: must be a config section, got {section!r}")
    fields = schema_fields(schema)
    for key in section:
        if key not in fields:
            raise ConfigError(f"{path}.{key}: unknown field{_did_you_mean(key, list(fields))} "
                              f"(fields: {', '.join(fields)})")
    values = {}
    for key, annotation in fields.items():
        if key not in section:
            raise ConfigError(f"{path}.{key}: missing (a complete config has every field; "
                              "start from the config files in configs/)")
        values[key] = _check_value(section[key], annotation, f"{path}.{key}")
    try:
        return schema(**values)
    except FieldError as error:
        shown = _lookup(values, error.field)
        value = "" if shown is _ABSENT else f" = {shown!r}"
        raise ConfigError(f"{path}.{error.field}{value}: {error.message}") from None
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None
