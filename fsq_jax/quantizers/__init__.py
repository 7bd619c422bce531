"""Quantizers behind one interface: FSQ (the paper), VQ (with its tricks), residual FSQ and LFQ.

Models call `build(config)`; every quantizer returns `QuantizerOutput` (see base.py).
"""

from fsq_jax.quantizers.base import RNG_STREAM, STATE_COLLECTION, QuantizerOutput
from fsq_jax.quantizers.fsq import FSQ, ResidualFSQ
from fsq_jax.quantizers.lfq import LFQ
from fsq_jax.quantizers.registry import NAMES, build, code_dim, codebook_size, default_config
from fsq_jax.quantizers.vq import VQ

__all__ = [
    "FSQ",
    "LFQ",
    "NAMES",
    "RNG_STREAM",
    "STATE_COLLECTION",
    "VQ",
    "QuantizerOutput",
    "ResidualFSQ",
    "build",
    "code_dim",
    "codebook_size",
    "default_config",
]
