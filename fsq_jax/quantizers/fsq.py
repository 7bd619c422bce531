"""Finite Scalar Quantization (FSQ), exactly as the paper's official code, and its residual variant.

FSQ bounds each channel with tanh, rounds it to one of `L_i` integers with a straight-through
gradient, and normalises to [-1, 1]; the codebook is the implicit product grid, nothing is learned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fsq_jax import codebook as codebook_lib
from fsq_jax.quantizers.base import QuantizerOutput

INT32_MAX = 2**31 - 1
SHIFT_MODES = ("tan", "atanh")


def validate_levels(levels: Sequence[int], field: str = "levels") -> tuple[int, ...]:
    """Returns `levels` as a tuple of Python ints, or raises ValueError naming the bad value.

    Each level must be an integer >= 2 and the product (the codebook size) must fit int32.
    """
    if isinstance(levels, str | bytes) or not isinstance(levels, Sequence | np.ndarray):
        raise ValueError(f"{field} must be a sequence of integers >= 2, got {levels!r}")
    if len(levels) == 0:
        raise ValueError(f"{field} must not be empty")
    out = []
    for level in levels:
        if isinstance(level, bool) or not isinstance(level, int | np.integer | float | np.floating):
            raise ValueError(f"{field} must contain integers, got {level!r} in {tuple(levels)}")
        if float(level) != int(level):
            raise ValueError(f"{field} must contain integers, got {level!r} in {tuple(levels)}")
        if int(level) < 2:
            raise ValueError(f"{field} must all be >= 2, got {int(level)} in {tuple(levels)}")
        out.append(int(level))
    size = math.prod(out)
    if size - 1 > INT32_MAX:
        raise ValueError(
            f"{field}={tuple(out)} gives a codebook of {size} codes, whose indices do not fit int32"
        )
    return tuple(out)


def round_ste(x: jax.Array) -> jax.Array:
    """Rounds in the forward pass with an identity gradient (straight-through).

    Written as `round(x) + (x - x)` with the rounding behind stop_gradient, so the forward value
    is exactly the rounded integer (no `x + (round(x) - x)` cancellation error).
    """
    return jax.lax.stop_gradient(jnp.round(x)) + (x - jax.lax.stop_gradient(x))


def _normalise(q: jax.Array, half_width: np.ndarray) -> jax.Array:
    """q / half_width computed as q * float32(1 / half_width).

    Compiled division by a constant becomes multiplication by the reciprocal (and vectorised
    division may differ from scalar division in the last bit), so the grid is defined by the
    multiplication, which rounds the same way eagerly, under jit and under vmap. For half widths
    that are powers of two (L in 2, 3, 4, 5, 8, 9, ...) this is exactly q / (L // 2).
    """
    reciprocal = (1.0 / half_width.astype(np.float64)).astype(np.float32)
    return q * reciprocal


def _level_constants(levels: tuple[int, ...], eps: float, shift_mode: str):
    """Per-channel numpy float32 constants: half_l, offset, shift, half_width."""
    levels_np = np.asarray(levels, np.float64)
    half_l = (levels_np - 1) * (1 - eps) / 2
    offset = np.where(np.asarray(levels) % 2 == 0, 0.5, 0.0)
    if shift_mode == "tan":
        shift = np.tan(offset / half_l)
    elif shift_mode == "atanh":
        if np.any(offset >= half_l):
            raise ValueError(
                f"shift='atanh' is undefined for levels {levels} (level 2 gives "
                "atanh(0.5 / half_l) with 0.5 / half_l > 1); use shift='tan'"
            )
        shift = np.arctanh(offset / half_l)
    else:
        raise ValueError(f"shift must be one of {SHIFT_MODES}, got {shift_mode!r}")
    half_width = np.asarray(levels) // 2
    return (
        half_l.astype(np.float32),
        offset.astype(np.float32),
        shift.astype(np.float32),
        half_width.astype(np.float32),
    )


def fsq_bound(z: jax.Array, levels: Sequence[int], eps: float = 1e-3, shift: str = "tan"):
    """The bound of the paper: `tanh(z + shift) * half_l - offset`, float32.

    Args:
      z: [..., len(levels)].
    Returns:
      [..., len(levels)] float32, channel i in (-L_i / 2, L_i / 2) so rounding gives L_i values.
    """
    half_l, offset, shift_v, _ = _level_constants(tuple(levels), eps, shift)
    z = z.astype(jnp.float32)
    return jnp.tanh(z + shift_v) * half_l - offset


def fsq_quantize(z: jax.Array, levels: Sequence[int], eps: float = 1e-3, shift: str = "tan"):
    """Quantizes z to the normalised FSQ grid with straight-through gradients.

    Args:
      z: [..., len(levels)].
    Returns:
      (codes, digits): codes [..., d] float32 on the grid within [-1, 1]; digits [..., d] int32
      in [0, L_i).
    """
    _, _, _, half_width = _level_constants(tuple(levels), eps, shift)
    codes = _normalise(round_ste(fsq_bound(z, levels, eps, shift)), half_width)
    # The digits come from the normalised codes, rounded as in `codes_to_indices` (so exact for
    # every level): XLA then writes the codes once for both consumers, which on CPU is ~8% faster
    # for forward+backward than deriving the digits from the unnormalised integers.
    digits = jnp.round(jax.lax.stop_gradient(codes) * half_width + half_width).astype(jnp.int32)
    return codes, digits


def basis(levels: Sequence[int]) -> np.ndarray:
    """Mixed-radix basis `[1, L0, L0*L1, ...]` as int32 (exact: the product fits int32)."""
    levels = tuple(int(x) for x in levels)
    return np.asarray([math.prod(levels[:i]) for i in range(len(levels))], np.int64).astype(
        np.int32
    )


def digits_to_indices(digits: jax.Array, levels: Sequence[int]) -> jax.Array:
    """[..., d] int digits in [0, L_i) -> [..., ] int32 indices."""
    return jnp.sum(digits.astype(jnp.int32) * basis(levels), axis=-1, dtype=jnp.int32)


def codes_to_indices(codes: jax.Array, levels: Sequence[int]) -> jax.Array:
    """Normalised codes [..., d] on the grid -> int32 indices [...] (rounded before the cast)."""
    half_width = (np.asarray(levels) // 2).astype(np.float32)
    digits = jnp.round(codes.astype(jnp.float32) * half_width + half_width).astype(jnp.int32)
    return digits_to_indices(digits, levels)


def indices_to_codes(indices: jax.Array, levels: Sequence[int]) -> jax.Array:
    """int indices [...] -> normalised float32 codes [..., d]."""
    levels_np = np.asarray(levels, np.int32)
    half_width = levels_np // 2
    digits = (indices.astype(jnp.int32)[..., None] // basis(levels)) % levels_np
    return _normalise((digits - half_width).astype(jnp.float32), half_width)


def check_floating(z: jax.Array) -> None:
    """Raises ValueError unless z has a floating dtype (quantizers take continuous inputs)."""
    if not jnp.issubdtype(jnp.result_type(z), jnp.floating):
        raise ValueError(f"z must have a floating dtype, got {jnp.result_type(z)}")


def check_index_range(indices: jax.Array, size: int, field: str = "indices") -> None:
    """Raises ValueError if concrete `indices` fall outside [0, size); under tracing the check
    runs on the host when the computation executes (the error then surfaces from the runtime)."""

    def host_check(values):
        values = np.asarray(values)
        if values.size and (values.min() < 0 or values.max() >= size):
            bad = values[(values < 0) | (values >= size)]
            raise ValueError(f"{field} out of range [0, {size}): found {bad.ravel()[:5].tolist()}")

    if isinstance(indices, jax.core.Tracer):
        jax.debug.callback(host_check, indices)
    else:
        host_check(indices)


def validate_settings(levels: Sequence[int], shift: str, eps: float) -> None:
    """Raises ValueError naming the bad FSQ setting (levels, shift mode or eps)."""
    levels = validate_levels(levels)
    if shift not in SHIFT_MODES:
        raise ValueError(f"shift must be one of {SHIFT_MODES}, got {shift!r}")
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must be in [0, 1), got {eps}")
    _level_constants(levels, eps, shift)


def check_last_dim(z: jax.Array, levels: Sequence[int]) -> None:
    """Raises ValueError unless z's last axis has one channel per level."""
    if z.ndim == 0 or z.shape[-1] != len(levels):
        raise ValueError(
            f"z last dimension must equal len(levels)={len(levels)} for levels "
            f"{tuple(levels)}, got shape {z.shape}"
        )


def lossless_output(quantized: jax.Array, indices: jax.Array, codebook_size: int,
                    compute_metrics: bool) -> QuantizerOutput:
    """The output of a quantizer without an auxiliary loss (FSQ and its variants)."""
    return QuantizerOutput(
        quantized=quantized,
        indices=indices,
        loss=jnp.zeros((), jnp.float32),
        metrics=codebook_lib.quantizer_batch_metrics(indices, codebook_size, compute_metrics),
    )


class FSQ(nn.Module):
    """Finite Scalar Quantization.

    Attributes:
      levels: number of values per channel, e.g. (8, 5, 5, 5) for a 1000-code codebook.
      shift: "tan" (the official code, default) or "atanh" (what the authors said was meant).
      eps: shrinks the bound slightly so tanh never reaches the edge of the rounding interval.
      check_indices: `indices_to_codes` raises ValueError on out-of-range indices.
      compute_metrics: batch perplexity and usage in `metrics` (skipped above 2^16 codes).
    """

    levels: Sequence[int] = (8, 5, 5, 5)
    shift: str = "tan"
    eps: float = 1e-3
    check_indices: bool = False
    compute_metrics: bool = True

    def __post_init__(self):
        validate_settings(self.levels, self.shift, self.eps)
        super().__post_init__()

    @property
    def codebook_size(self) -> int:
        return math.prod(int(x) for x in self.levels)

    @property
    def dim(self) -> int:
        return len(self.levels)

    def _check_dim(self, z: jax.Array) -> None:
        check_last_dim(z, self.levels)

    def __call__(self, z: jax.Array, train: bool = False) -> QuantizerOutput:
        """Quantizes z: [..., len(levels)] -> QuantizerOutput (quantized in z's dtype)."""
        del train  # FSQ behaves the same in training and evaluation.
        check_floating(z)
        self._check_dim(z)
        codes, digits = fsq_quantize(z, self.levels, self.eps, self.shift)
        indices = digits_to_indices(digits, self.levels)
        return lossless_output(codes.astype(z.dtype), indices, self.codebook_size,
                               self.compute_metrics)

    def codes_to_indices(self, codes: jax.Array) -> jax.Array:
        """codes: [..., d] on the normalised grid -> int32 [...]."""
        self._check_dim(codes)
        return codes_to_indices(codes, self.levels)

    def indices_to_codes(self, indices: jax.Array) -> jax.Array:
        """indices: int [...] -> float32 codes [..., d]."""
        if self.check_indices:
            check_index_range(indices, self.codebook_size)
        return indices_to_codes(indices, self.levels)

    def indices_to_quantized(self, indices: jax.Array) -> jax.Array:
        """indices: int [...] -> the float32 vectors [..., d] a decoder takes (here the codes)."""
        return self.indices_to_codes(indices)


SCALINGS = ("levels", "geometric")


def level_scale_ratio(levels: Sequence[int]) -> np.ndarray:
    """float64 [d]: `s_{k+1} / s_k` of `scaling="levels"`, `1 / max(L_i - 1, 2)` per channel.

    An FSQ stage rounds `tanh(x) * (L - 1) / 2` (approximately), so its decision boundaries lie
    about `2 / (L - 1)` apart in its input and it leaves a residual within `1 / (L - 1)` of its
    scale: `(L - 1) ** -k` (lucidrains/vector-quantize-pytorch, `residual_fsq.py` until it moved
    to a symmetric grid with `L ** -k`) makes the next stage's grid span exactly that. For L = 2
    that ratio is 1, so later stages repeat the first one's scale and never refine: a level-2
    stage has the codes {-1, 0} (the paper's grid), a single step as large as its scale, and the
    next stage takes half of it. For every L the next scale is then strictly smaller than the
    previous stage's grid step `s_k / (L // 2)`.
    """
    levels = np.asarray(validate_levels(levels), np.float64)
    return 1.0 / np.maximum(levels - 1.0, 2.0)


class ResidualFSQ(nn.Module):
    """Residual FSQ: stage k quantizes what the earlier stages left over, at a finer scale.

    Stage k (from 0) quantizes `r_k / s_k` with FSQ and contributes `q_k = codes_k * s_k`, where
    `r_0 = z`, `r_{k+1} = r_k - q_k`. With `scaling="levels"`, `s_k = max(L_i - 1, 2) ** -k` per
    channel (see `level_scale_ratio`); with `scaling="geometric"`, `s_k = scale_factor ** k`. The
    output is `sum_k q_k` with straight-through gradients.

    `indices_to_codes` and `codes_to_indices` map between indices `[..., num_stages]` and the
    per-stage (unscaled) codes `[..., num_stages, d]`, and invert each other;
    `indices_to_quantized` gives the summed vector `[..., d]` the forward pass returns.

    Attributes:
      levels: per-channel levels of every stage (the per-stage codebook is their product).
      num_stages: number of FSQ stages; indices have shape `z.shape[:-1] + (num_stages,)`.
      scaling: "levels" or "geometric".
      scale_factor: ratio between consecutive stage scales when `scaling="geometric"`, in (0, 1].
      shift, eps, check_indices, compute_metrics: as in FSQ (metrics pool all stages' indices).
    """

    levels: Sequence[int] = (8, 5, 5, 5)
    num_stages: int = 2
    scaling: str = "levels"
    scale_factor: float = 0.25
    shift: str = "tan"
    eps: float = 1e-3
    check_indices: bool = False
    compute_metrics: bool = True

    def __post_init__(self):
        validate_levels(self.levels)
        if (
            isinstance(self.num_stages, bool)
            or not isinstance(self.num_stages, int)
            or (self.num_stages < 1)
        ):
            raise ValueError(f"num_stages must be an integer >= 1, got {self.num_stages!r}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {self.scaling!r}")
        if not 0.0 < self.scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be in (0, 1], got {self.scale_factor}")
        validate_settings(self.levels, self.shift, self.eps)
        super().__post_init__()

    @property
    def codebook_size(self) -> int:
        """Size of each stage's codebook."""
        return math.prod(int(x) for x in self.levels)

    @property
    def num_codebooks(self) -> int:
        return self.num_stages

    @property
    def dim(self) -> int:
        return len(self.levels)

    def stage_scales(self) -> np.ndarray:
        """float32 [num_stages, d]: the scale s_k of each stage and channel."""
        stages = np.arange(self.num_stages, dtype=np.float64)[:, None]
        if self.scaling == "levels":
            ratio = level_scale_ratio(self.levels)[None, :]
        else:
            ratio = np.full((1, self.dim), self.scale_factor, np.float64)
        return (ratio**stages).astype(np.float32)

    def _check_dim(self, z: jax.Array) -> None:
        check_last_dim(z, self.levels)

    def __call__(self, z: jax.Array, train: bool = False) -> QuantizerOutput:
        """z: [..., d] -> quantized [..., d] (z's dtype), indices int32 [..., num_stages]."""
        del train
        check_floating(z)
        self._check_dim(z)
        residual = z.astype(jnp.float32)
        quantized = jnp.zeros_like(residual)
        all_indices = []
        for scale in self.stage_scales():
            codes, digits = fsq_quantize(residual / scale, self.levels, self.eps, self.shift)
            stage = codes * scale
            quantized = quantized + stage
            residual = residual - jax.lax.stop_gradient(stage)
            all_indices.append(digits_to_indices(digits, self.levels))
        return lossless_output(quantized.astype(z.dtype), jnp.stack(all_indices, axis=-1),
                               self.codebook_size, self.compute_metrics)

    def codes_to_indices(self, codes: jax.Array) -> jax.Array:
        """Per-stage (unscaled) codes [..., num_stages, d] -> int32 [..., num_stages]."""
        self._check_dim(codes)
        if codes.ndim < 2 or codes.shape[-2] != self.num_stages:
            raise ValueError(
                f"codes must have shape [..., num_stages={self.num_stages}, {self.dim}], "
                f"got {codes.shape}"
            )
        return codes_to_indices(codes, self.levels)

    def _check_stage_indices(self, indices: jax.Array) -> None:
        if indices.ndim == 0 or indices.shape[-1] != self.num_stages:
            raise ValueError(
                f"indices last dimension must equal num_stages={self.num_stages}, "
                f"got shape {indices.shape}"
            )
        if self.check_indices:
            check_index_range(indices, self.codebook_size)

    def indices_to_codes(self, indices: jax.Array) -> jax.Array:
        """indices [..., num_stages] -> per-stage (unscaled) codes, float32 [..., num_stages, d]."""
        self._check_stage_indices(indices)
        return indices_to_codes(indices, self.levels)

    def indices_to_quantized(self, indices: jax.Array) -> jax.Array:
        """indices [..., num_stages] -> the summed quantized vector, float32 [..., d].

        Bitwise what the forward pass returns for these indices: the stages are scaled and added
        in the forward pass's order.
        """
        codes = self.indices_to_codes(indices)  # [..., S, d]
        quantized = jnp.zeros(codes.shape[:-2] + codes.shape[-1:], jnp.float32)
        for stage, scale in enumerate(self.stage_scales()):
            quantized = quantized + codes[..., stage, :] * scale
        return quantized
