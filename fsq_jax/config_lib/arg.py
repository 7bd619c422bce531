"""The one preset language of every config file: `get_config("vq,paper,stage2,steps=500")`.

As big_vision's `bvcc.parse_arg`: the argument is a comma list; `key=value` sets an option, a bare
token either picks a value of a choice option (`vq` for `quantizer`) or switches a boolean option
on (`nosplit`). Each option is declared with its default; anything else, or an option given twice,
is an error naming the token.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from typing import Any

import ml_collections


@dataclasses.dataclass(frozen=True)
class Choice:
    """An option taking one of `options`; a bare token equal to an option selects it."""

    default: str
    options: Sequence[str]

    def __post_init__(self):
        if self.default not in self.options:
            raise ValueError(f"Choice default {self.default!r} is not in {tuple(self.options)}")


def _convert(key: str, text: str, default: Any, arg: str) -> Any:
    if isinstance(default, Choice):
        if text not in default.options:
            raise ValueError(f"config arg {arg!r}: {key}={text!r} must be one of "
                             f"{', '.join(default.options)}")
        return text
    if isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"config arg {arg!r}: {key}={text!r} must be true or false")
        return text.lower() in ("true", "1")
    try:
        return type(default)(text)
    except ValueError:
        raise ValueError(f"config arg {arg!r}: {key}={text!r} must be a "
                         f"{type(default).__name__}") from None


def _suggest(token: str, words: Sequence[str]) -> str:
    close = difflib.get_close_matches(token, list(words), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
    """Parses a preset argument against the declared options.

    Args:
      arg: e.g. "vq,paper,nosplit" or "size=tiny,steps=300"; None or "" gives the defaults.
      **spec: option name -> default: a `Choice`, a bool (a flag: the bare token switches it
        on), or an int / float / str (set with `key=value`).

    Returns:
      A ConfigDict with one entry per option.

    Raises:
      ValueError: one line naming the unknown token, the option given twice, or the bad value.
    """
    parsed = {k: (v.default if isinstance(v, Choice) else v) for k, v in spec.items()}
    given: dict[str, str] = {}
    owners = {opt: key for key, v in spec.items() if isinstance(v, Choice) for opt in v.options}
    flags = [key for key, v in spec.items() if isinstance(v, bool)]
    for token in (t.strip() for t in (arg or "").split(",")):
        if not token:
            continue
        if "=" in token:
            key, _, text = token.partition("=")
            key = key.strip()
            if key not in spec:
                raise ValueError(f"config arg {arg!r}: unknown option {key!r}"
                                 f"{_suggest(key, list(spec))}; options: {', '.join(spec)}")
            value = _convert(key, text.strip(), spec[key], arg)
        elif token in owners:
            key, value = owners[token], token
        elif token in flags:
            key, value = token, True
        else:
            words = [*owners, *flags]
            raise ValueError(f"config arg {arg!r}: unknown preset {token!r}"
                             f"{_suggest(token, words)}; presets: {', '.join(words)}")
        if key in given:
            raise ValueError(f"config arg {arg!r}: {key} given twice ({given[key]!r} and "
                             f"{token!r}); choose one")
        given[key] = token
        parsed[key] = value
    return ml_collections.ConfigDict(parsed)
