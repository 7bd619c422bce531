"""Quantizers behind one interface: FSQ (the paper), VQ (with its tricks), residual FSQ and LFQ.

Models call `build(config.quantizer)`; every quantizer returns `QuantizerOutput` (see base.py);
`registry.py` says how a config section selects one and how to add a quantizer. `Projected` wraps
any of them between two dense projections (vector-quantize-pytorch's `FSQ(levels, dim=...)`).
"""

from fsq_jax.quantizers.base import RNG_STREAM, STATE_COLLECTION, QuantizerOutput
from fsq_jax.quantizers.fsq import FSQ, ResidualFSQ
from fsq_jax.quantizers.lfq import LFQ
from fsq_jax.quantizers.projected import Projected
from fsq_jax.quantizers.registry import (
    NAMES,
    QUANTIZERS,
    QuantizerConfig,
    build,
    code_dim,
    codebook_size,
    config,
    default_config,
)
from fsq_jax.quantizers.vq import VQ

__all__ = [
    "FSQ",
    "LFQ",
    "NAMES",
    "QUANTIZERS",
    "RNG_STREAM",
    "STATE_COLLECTION",
    "VQ",
    "Projected",
    "QuantizerConfig",
    "QuantizerOutput",
    "ResidualFSQ",
    "build",
    "code_dim",
    "codebook_size",
    "config",
    "default_config",
]
