"""Masking for MaskGIT: the training-time random mask, the decoding-time schedule and the
masked class token of classifier-free guidance.

MaskGIT samples a masking ratio from the cosine schedule per example; the FSQ paper adds a floor
(at least 45% of tokens masked) which stabilised training. Masks here hold an exact token count.
For guidance the FSQ paper (Sec. 4.3) masks the class too: "we replace 10% of the class labels
with the MASK token"; the unconditional logits at sampling come from the same masked class token.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Literal

import jax
import jax.numpy as jnp

from fsq_jax.config_lib import require

Schedule = Literal["cosine", "linear", "square"]
SCHEDULES = typing.get_args(Schedule)
# The label of the unconditional input: the transformer puts the [MASK] token in the class
# position for it (`maskgit.transformer.class_token_id`).
UNCONDITIONAL = -1


@dataclasses.dataclass(frozen=True, kw_only=True)
class MaskingConfig:
    """`masking.*` of stage-II training (the FSQ paper's masking-ratio floor, Sec. 4.1)."""

    schedule: Schedule  # masking ratio gamma(r) of a uniform r (MaskGIT: cosine)
    min_ratio: float  # at least this fraction of the tokens is masked
    label_dropout: float  # class tokens replaced by [MASK] this often (for guidance)

    def __post_init__(self):
        require(0.0 <= self.min_ratio < 1.0, "min_ratio", "must be in [0, 1)")
        require(0.0 <= self.label_dropout < 1.0, "label_dropout", "must be in [0, 1)")


def schedule(progress: jax.Array, method: str = "cosine") -> jax.Array:
    """Masking ratio gamma(r) for progress r in [0, 1]: 1 at r=0, 0 at r=1.

    cosine: cos(pi/2 * r) (MaskGIT's default); linear: 1 - r; square: 1 - r^2.
    """
    progress = jnp.asarray(progress, jnp.float32)
    if method == "cosine":
        return jnp.cos(0.5 * math.pi * progress)
    if method == "linear":
        return 1.0 - progress
    if method == "square":
        return 1.0 - jnp.square(progress)
    raise ValueError(f"masking.schedule = {method!r}: one of {SCHEDULES}")


def _inverse_schedule(ratio: float, method: str) -> float:
    """The progress r at which schedule(r) == ratio (schedules are decreasing)."""
    if method == "cosine":
        return 2.0 / math.pi * math.acos(ratio)
    if method == "linear":
        return 1.0 - ratio
    if method == "square":
        return math.sqrt(1.0 - ratio)
    raise ValueError(f"masking.schedule = {method!r}: one of {SCHEDULES}")


def sample_mask_ratio(
    rng: jax.Array, batch: int, min_ratio: float = 0.45, method: str = "cosine"
) -> jax.Array:
    """Per-example masking ratios gamma(r), r ~ U[0, r_max), with gamma(r_max) = min_ratio.

    That is the schedule's distribution restricted to ratios in (min_ratio, 1], the FSQ paper's
    floor (no point mass at the floor). Returns float32 [batch].
    """
    if not 0.0 <= min_ratio < 1.0:
        raise ValueError(f"masking.min_ratio = {min_ratio}: must be in [0, 1)")
    r_max = _inverse_schedule(min_ratio, method)
    progress = jax.random.uniform(rng, (batch,), maxval=r_max)
    return schedule(progress, method)


def num_masked(ratio: jax.Array, seq_len: int, min_ratio: float = 0.0) -> jax.Array:
    """Tokens to mask: ceil(ratio * seq_len), at least ceil(min_ratio * seq_len) and >= 1.

    ratio: float [batch] -> int32 [batch] in [1, seq_len].
    """
    count = jnp.ceil(ratio * seq_len - 1e-4).astype(jnp.int32)
    floor = max(1, math.ceil(min_ratio * seq_len - 1e-4))
    return jnp.clip(count, floor, seq_len)


def mask_by_count(rng: jax.Array, count: jax.Array, seq_len: int) -> jax.Array:
    """Random boolean masks with exactly count[i] True entries in row i.

    count: int32 [batch] -> bool [batch, seq_len] (uniformly random positions).
    """
    scores = jax.random.uniform(rng, (count.shape[0], seq_len))
    ranks = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
    return ranks < count[:, None]


def random_mask(
    rng: jax.Array, batch: int, seq_len: int, min_ratio: float = 0.45, method: str = "cosine"
) -> jax.Array:
    """The training mask: a schedule ratio per example (with the floor), then exactly that many
    random positions. Returns bool [batch, seq_len] (True = masked)."""
    ratio_rng, position_rng = jax.random.split(rng)
    ratio = sample_mask_ratio(ratio_rng, batch, min_ratio, method)
    return mask_by_count(position_rng, num_masked(ratio, seq_len, min_ratio), seq_len)


def drop_labels(rng: jax.Array, labels: jax.Array, rate: float) -> jax.Array:
    """Labels with each one replaced by `UNCONDITIONAL` with probability `rate` (the FSQ paper's
    label dropout for classifier-free guidance). int [B] -> int32 [B]."""
    labels = labels.astype(jnp.int32)
    if rate <= 0:
        return labels
    drop = jax.random.bernoulli(rng, rate, labels.shape)
    return jnp.where(drop, UNCONDITIONAL, labels)
