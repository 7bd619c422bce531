"""Quantizer presets: one table keyed by (quantizer, codebook size) that every config reads.

`quantizer("fsq", log2_size=10)` is a complete `quantizer` section (see
`fsq_jax.quantizers.registry`): `name` selects the quantizer, and every registered quantizer's
sub-section holds its module defaults, sized from `sized(quantizer, log2_size)` and updated with
the experiment's own settings (e.g. MaskGIT's VQ commitment and entropy weights). So each preset
can swap its quantizer with `--config.quantizer.name=vq` and gets a codebook of the same size.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import ml_collections

# FSQ paper, Table 1 (and the appendix's extra sizes): FSQ levels per target size 2^k.
RECOMMENDED_LEVELS = MappingProxyType({
    4: (5, 3),
    6: (8, 8),
    8: (8, 6, 5),
    9: (8, 8, 8),
    10: (8, 5, 5, 5),
    11: (8, 8, 6, 5),
    12: (7, 5, 5, 5, 5),
    14: (8, 8, 8, 6, 5),
    16: (8, 8, 8, 5, 5, 5),
})


def fsq_levels(log2_size: int) -> tuple[int, ...]:
    """Table 1's FSQ levels for a codebook of about 2^log2_size codes."""
    if log2_size not in RECOMMENDED_LEVELS:
        raise ValueError(f"no recommended FSQ levels for 2^{log2_size}; Table 1 has 2^k for k "
                         f"in {sorted(RECOMMENDED_LEVELS)}")
    return RECOMMENDED_LEVELS[log2_size]


def sized(name: str, log2_size: int) -> dict[str, Any]:
    """The (quantizer, size) table: the fields giving `name` a codebook of ~2^log2_size codes.

    FSQ and residual FSQ (per stage) take Table 1's levels, VQ 2^k learned codes, LFQ k bits.
    """
    if name in ("fsq", "residual_fsq"):
        return {"levels": fsq_levels(log2_size)}
    if name == "vq":
        return {"codebook_size": 2**log2_size}
    if name == "lfq":
        return {"dim": log2_size}
    raise ValueError(f"quantizer {name!r} has no sizing rule; add one to "
                     "fsq_jax/config_lib/quantizers.py:sized")


def names() -> tuple[str, ...]:
    """The registered quantizer names (the `quantizer` choice of every preset argument)."""
    from fsq_jax.quantizers import registry

    return registry.NAMES


def quantizer(name: str = "fsq", log2_size: int = 10, **settings: Any
              ) -> ml_collections.ConfigDict:
    """A complete `quantizer` section selecting `name`, every quantizer sized to ~2^log2_size.

    Args:
      name: the selected quantizer (a registered name).
      log2_size: codebook size of every sub-section, through `sized`.
      **settings: quantizer name -> fields of that quantizer to set on top (e.g.
        `vq={"beta": 0.25, "entropy_weight": 0.1}`).
    """
    from fsq_jax.quantizers import registry

    sub_sections = {q: {**sized(q, log2_size), **dict(settings.get(q, {}))}
                    for q in registry.NAMES}
    unknown = sorted(set(settings) - set(registry.NAMES))
    if unknown:
        registry.get(unknown[0])
    return registry.quantizer_section(name, **sub_sections)
