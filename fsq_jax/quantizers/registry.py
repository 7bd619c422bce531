"""The quantizer registry: one line per quantizer, everything else derived from the module.

A quantizer's config fields are its Flax module's own dataclass fields (defaults included), so
they are declared once. A config's `quantizer` section names the quantizer to use and holds one
sub-section per registered quantizer:

    quantizer.name = "fsq"
    quantizer.fsq = {levels: (8, 5, 5, 5), shift: "tan", ...}
    quantizer.vq = {codebook_size: 1024, dim: 256, beta: 0.25, ...}

so `--config.quantizer.name=vq` swaps the quantizer of any preset, and every field of every
quantizer can be overridden (`--config.quantizer.vq.codebook_size=4096`). The code dimension
and codebook size always come from the built module (`dim`, `codebook_size`, `num_codebooks`).
"""

from __future__ import annotations

import difflib
from typing import Any

import flax.linen as nn
import ml_collections

from fsq_jax.quantizers.fsq import FSQ, ResidualFSQ
from fsq_jax.quantizers.lfq import LFQ
from fsq_jax.quantizers.vq import VQ
from fsq_jax.schema import ConfigError, check, field_defaults

# name -> module. Adding a quantizer: write its module (fields with defaults, `dim`,
# `codebook_size`, the QuantizerOutput interface) and add one line here.
QUANTIZERS: dict[str, type[nn.Module]] = {
    "fsq": FSQ,
    "vq": VQ,
    "residual_fsq": ResidualFSQ,
    "lfq": LFQ,
}
NAMES = tuple(QUANTIZERS)


def get(name: str) -> type[nn.Module]:
    """The module class registered as `name`; ValueError naming the allowed names otherwise."""
    if name not in QUANTIZERS:
        close = difflib.get_close_matches(str(name), NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"quantizer name {name!r} is not registered{hint}; one of "
                         f"{', '.join(NAMES)}")
    return QUANTIZERS[name]


def default_config(name: str) -> ml_collections.ConfigDict:
    """Every field of quantizer `name` with the module's default (one sub-section)."""
    return ml_collections.ConfigDict(field_defaults(get(name)))


def quantizer_section(name: str = "fsq", **sub_sections: Any) -> ml_collections.ConfigDict:
    """A complete `quantizer` section: `name` plus every registered quantizer's fields.

    `sub_sections` maps a quantizer name to the fields that differ from its defaults.
    """
    get(name)
    for key in sub_sections:
        get(key)
    section = ml_collections.ConfigDict({"name": name})
    for key in NAMES:
        fields = default_config(key)
        fields.update(dict(sub_sections.get(key, {})))
        section[key] = fields
    return section


def config(name: str = "fsq", **fields: Any) -> ml_collections.ConfigDict:
    """A complete `quantizer` section selecting `name` with `fields` set on it, e.g.
    `config("vq", codebook_size=8, dim=3)`; `build(config(...))` is the module."""
    return quantizer_section(name, **{name: fields})


def _selected(section: Any, path: str) -> str:
    """The registered quantizer name `section` selects (ConfigError otherwise)."""
    if not hasattr(section, "keys"):
        raise ConfigError(f"{path}: must be a section with a name and one sub-section per "
                          f"quantizer, got {section!r}")
    name = section.get("name", None)
    if name not in QUANTIZERS:
        close = difflib.get_close_matches(str(name), NAMES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{path}.name = {name!r}: not a registered quantizer{hint} "
                          f"(one of {', '.join(NAMES)})")
    if name not in section:
        raise ConfigError(f"{path}.{name}: missing (the fields of the selected quantizer)")
    return name


class QuantizerConfig:
    """Schema type of a `quantizer` section (see the module docstring): the name must be
    registered and every sub-section must fit its module's fields."""

    @classmethod
    def __config_check__(cls, section: Any, path: str) -> nn.Module:
        name = _selected(section, path)
        for key in section:
            if key != "name" and key not in QUANTIZERS:
                raise ConfigError(f"{path}.{key}: unknown sub-section; sub-sections are the "
                                  f"registered quantizers ({', '.join(NAMES)})")
        modules = {key: check(section[key], QUANTIZERS[key], f"{path}.{key}")
                   for key in section if key != "name"}
        return modules[name]


def build(config: Any) -> nn.Module:
    """The quantizer a `quantizer` section selects (ConfigError naming a bad field)."""
    name = _selected(config, "quantizer")
    return check(config[name], QUANTIZERS[name], f"quantizer.{name}")


def code_dim(config: Any) -> int:
    """The last dimension of `z` the configured quantizer expects."""
    return int(build(config).dim)


def codebook_size(config: Any) -> int:
    """Codebook size (per codebook, for residual variants) of the configured quantizer."""
    return int(build(config).codebook_size)
