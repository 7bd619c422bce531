"""Vector quantization (VQ-VAE) with the machinery FSQ makes unnecessary, each part switchable.

Nearest-code lookup with straight-through gradients, plus: commitment and codebook losses or EMA
codebook updates, l2-normalised (cosine) codes, dead-code reseeding from batch encodings,
UViM-style codebook splitting, the MaskGIT entropy penalty, and k-means initialisation.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from fsq_jax import codebook as codebook_lib
from fsq_jax.quantizers.base import RNG_STREAM, STATE_COLLECTION, QuantizerOutput
from fsq_jax.quantizers.fsq import check_floating, check_index_range


def squared_distances(z: jax.Array, codebook: jax.Array) -> jax.Array:
    """||z - e||^2 for all pairs as ||z||^2 - 2 z.e + ||e||^2, never forming [N, K, D].

    Args:
      z: [N, D]; codebook: [K, D].
    Returns:
      [N, K] float32.
    """
    z_sq = jnp.sum(z * z, axis=-1, keepdims=True)
    e_sq = jnp.sum(codebook * codebook, axis=-1)
    cross = jnp.matmul(z, codebook.T, precision=jax.lax.Precision.HIGHEST)
    return z_sq - 2.0 * cross + e_sq[None, :]


# Above this many codes a float32 position is no longer exact and `first_argmin` uses argmin.
_MAX_FLOAT_POSITIONS = 2**24


def first_argmin(values: jax.Array) -> jax.Array:
    """int32 [...] position of the first minimum along the last axis: `jnp.argmin`, faster.

    XLA on CPU lowers argmin to a (value, index) pair reduction that does not vectorise and costs
    as much as a third of VQ's step; this is two plain reductions instead: the row minimum `m`,
    then the smallest position whose value equals `m`. `values - m` is >= 0, and 0 only where a
    value equals `m` (IEEE subtraction with gradual underflow), so
    `max(position, K * sign(values - m))` is the position there and K elsewhere. The same result
    as `jnp.argmin` for finite values; a row holding NaN gives 0 (argmin: the first NaN's position).

    Args:
      values: [..., K] float32.
    """
    size = values.shape[-1]
    if size > _MAX_FLOAT_POSITIONS or values.dtype != jnp.float32:
        return jnp.argmin(values, axis=-1).astype(jnp.int32)
    minimum = jnp.min(values, axis=-1, keepdims=True)
    positions = jnp.arange(size, dtype=jnp.float32)
    candidates = jnp.maximum(positions, jnp.sign(values - minimum) * float(size))
    return jnp.min(candidates, axis=-1).astype(jnp.int32)


def nearest_code(z: jax.Array, codebook: jax.Array) -> jax.Array:
    """int32 [N] index of the nearest code (||z||^2 does not move the argmin, so it is skipped)."""
    e_sq = jnp.sum(codebook * codebook, axis=-1)
    cross = jnp.matmul(z, codebook.T, precision=jax.lax.Precision.HIGHEST)
    return first_argmin(e_sq[None, :] - 2.0 * cross)


def entropy_penalty(distances: jax.Array, temperature: float) -> jax.Array:
    """MaskGIT's entropy penalty: mean per-sample entropy minus the entropy of the batch average.

    The soft assignment is `softmax(-distances / temperature)`. Minimising the penalty makes
    each assignment confident and the batch use many codes.

    Args:
      distances: [N, K] squared distances.
    Returns:
      float32 scalar in nats (between -log K and log K).
    """
    log_probs = jax.nn.log_softmax(-distances / temperature, axis=-1)
    probs = jnp.exp(log_probs)
    sample_entropy = -jnp.mean(jnp.sum(probs * log_probs, axis=-1))
    avg_entropy = codebook_lib.entropy_from_counts(jnp.mean(probs, axis=0))
    return sample_entropy - avg_entropy


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


# jax.nn.standardize's default epsilon, the one big_vision's UViM VQ uses.
STANDARDIZE_EPSILON = 1e-5


def standardize(x: jax.Array, eps: float = STANDARDIZE_EPSILON) -> jax.Array:
    """(x - mean) / sqrt(var + eps) over the last axis: zero mean and (nearly) unit variance
    per vector, so its norm is about sqrt(dim)."""
    centred = x - jnp.mean(x, axis=-1, keepdims=True)
    return centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)


def kmeans(
    rng: jax.Array, points: jax.Array, num_clusters: int, iterations: int, normalize: bool = False
) -> jax.Array:
    """Lloyd's k-means from `num_clusters` random points (with replacement if too few points).

    Args:
      points: [N, D] float32.
    Returns:
      [num_clusters, D] centres (a centre that loses all its points keeps its last position).
    """
    start = jax.random.randint(rng, (num_clusters,), 0, points.shape[0])
    centres = points[start]

    def step(_, centres):
        assign = nearest_code(points, centres)
        sums = jax.ops.segment_sum(points, assign, num_clusters)
        counts = jax.ops.segment_sum(jnp.ones_like(assign, jnp.float32), assign, num_clusters)
        new = sums / jnp.maximum(counts, 1.0)[:, None]
        if normalize:
            new = l2_normalize(new)
        return jnp.where(counts[:, None] > 0, new, centres)

    return jax.lax.fori_loop(0, iterations, step, centres)


class VQ(nn.Module):
    """Vector quantizer: z: [..., dim] -> nearest of `codebook_size` learned codes.

    Training state (EMA statistics, usage counts, k-means flag, step) lives in STATE_COLLECTION and
    changes only when `train=True` and the collection is mutable. Parameters change only through
    the optimiser, so when reseeding, splitting or k-means replace a code of a gradient-trained
    codebook (`use_ema=False`), the replacement is stored as a correction in STATE_COLLECTION that
    is added to the `codebook` parameter (the parameter keeps receiving the same gradients).

    Attributes:
      codebook_size: K.
      dim: D, the last dimension of z.
      beta: commitment loss weight, `beta * mean((z - sg(e))^2)`.
      use_ema: update codes as EMA of assigned encodings (no codebook loss) instead of gradients.
      ema_decay: decay of the EMA codebook statistics.
      ema_epsilon: Laplace smoothing of the EMA counts.
      l2_normalize: normalise z and codes to the unit sphere (cosine distance).
      standardize: standardise z over its last axis (zero mean, unit variance, eps 1e-5)
        instead of normalising it: UViM's VQ (big_vision models/proj/uvim/vit.py `encode`:
        `jax.nn.standardize` before the lookup, against unit-norm codewords when
        `l2_normalize`). The EMA statistics then average standardised vectors; `quantized` is
        the code in the forward pass and passes gradients through the standardisation.
      reseed_dead_codes: replace codes whose usage fell below `dead_code_threshold` with random
        encodings of the current batch (draws from the RNG_STREAM rng).
      split_codes: UViM's splitting: while a code's usage is below `dead_code_threshold`, replace
        the least used code by a perturbed copy of the most used one and halve their usage.
      dead_code_threshold: usage (EMA of per-batch hit counts) below which a code is dead.
      usage_decay: decay of the usage EMA.
      usage_init: every code's usage before the first batch (hits per batch). With 1 a code
        unused from the start is dead after log(threshold) / log(usage_decay) batches.
      split_perturbation: relative multiplicative noise of a split copy.
      entropy_weight: weight of MaskGIT's entropy penalty (0 disables it).
      entropy_temperature: temperature of the soft assignment in the penalty.
      kmeans_init: initialise the codes by k-means on the first training batch.
      kmeans_iterations: Lloyd iterations of that initialisation.
      check_indices: `indices_to_codes` raises ValueError on out-of-range indices.
      compute_metrics: batch perplexity and usage in `metrics`.
    """

    codebook_size: int = 1024
    dim: int = 256
    beta: float = 0.25
    use_ema: bool = False
    ema_decay: float = 0.99
    ema_epsilon: float = 1e-5
    l2_normalize: bool = False
    standardize: bool = False
    reseed_dead_codes: bool = False
    split_codes: bool = False
    dead_code_threshold: float = 0.01
    usage_decay: float = 0.99
    usage_init: float = 1.0
    split_perturbation: float = 1e-3
    entropy_weight: float = 0.0
    entropy_temperature: float = 0.01
    kmeans_init: bool = False
    kmeans_iterations: int = 10
    check_indices: bool = False
    compute_metrics: bool = True

    def __post_init__(self):
        for field in ("codebook_size", "dim", "kmeans_iterations"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if self.codebook_size > 2**31 - 1:
            raise ValueError(f"codebook_size must fit int32, got {self.codebook_size}")
        for field in ("ema_decay", "usage_decay"):
            if not 0.0 <= getattr(self, field) < 1.0:
                raise ValueError(f"{field} must be in [0, 1), got {getattr(self, field)}")
        for field in (
            "beta",
            "ema_epsilon",
            "dead_code_threshold",
            "usage_init",
            "split_perturbation",
            "entropy_weight",
        ):
            if getattr(self, field) < 0:
                raise ValueError(f"{field} must be >= 0, got {getattr(self, field)}")
        if self.entropy_temperature <= 0:
            raise ValueError(f"entropy_temperature must be > 0, got {self.entropy_temperature}")
        super().__post_init__()

    @property
    def _corrected(self) -> bool:
        """Whether code replacements need a correction on top of the codebook parameter."""
        return not self.use_ema and (self.reseed_dead_codes or self.split_codes or self.kmeans_init)

    @property
    def _tracks_usage(self) -> bool:
        return self.reseed_dead_codes or self.split_codes

    def setup(self):
        shape = (self.codebook_size, self.dim)
        init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
        if self.use_ema:
            self.ema_codebook = self.variable(
                STATE_COLLECTION, "codebook", lambda: init(self.make_rng("params"), shape)
            )
            self.ema_count = self.variable(
                STATE_COLLECTION, "ema_count", jnp.ones, (self.codebook_size,), jnp.float32
            )
            self.ema_sum = self.variable(
                STATE_COLLECTION, "ema_sum", lambda: self.ema_codebook.value
            )
        else:
            self.codebook_param = self.param("codebook", init, shape)
        if self._corrected:
            self.correction = self.variable(
                STATE_COLLECTION, "codebook_correction", jnp.zeros, shape, jnp.float32
            )
        if self._tracks_usage:
            self.usage = self.variable(
                STATE_COLLECTION, "usage", lambda: jnp.full((self.codebook_size,),
                                                            self.usage_init, jnp.float32)
            )
        if self.kmeans_init:
            self.initialized = self.variable(
                STATE_COLLECTION, "initialized", lambda: jnp.zeros((), jnp.bool_)
            )

    # -- codebook access ---------------------------------------------------------------------

    def _raw_codebook(self) -> jax.Array:
        """[K, D] current codes before normalisation."""
        if self.use_ema:
            return self.ema_codebook.value
        codebook = jnp.asarray(self.codebook_param, jnp.float32)
        if self._corrected:
            codebook = codebook + self.correction.value
        return codebook

    def get_codebook(self) -> jax.Array:
        """[K, D] float32 codes as used for lookup (unit norm when l2_normalize)."""
        codebook = self._raw_codebook()
        return l2_normalize(codebook) if self.l2_normalize else codebook

    def _set_codes(self, new_codebook: jax.Array) -> None:
        """Stores replaced codes ([K, D], raw space) without touching trained parameters."""
        new_codebook = jax.lax.stop_gradient(new_codebook)
        if self.use_ema:
            self.ema_codebook.value = new_codebook
        else:
            self.correction.value = new_codebook - jax.lax.stop_gradient(self.codebook_param)

    def _rng(self, purpose: str) -> jax.Array:
        if not self.has_rng(RNG_STREAM):
            raise ValueError(
                f"VQ with {purpose} needs an rng named {RNG_STREAM!r} in apply(..., rngs=...)"
            )
        return self.make_rng(RNG_STREAM)

    def _lookup_input(self, flat: jax.Array) -> jax.Array:
        """[N, dim] vectors as compared with the codes: standardised, l2-normalised or as is."""
        if self.standardize:
            return standardize(flat)
        return l2_normalize(flat) if self.l2_normalize else flat

    def _check_dim(self, z: jax.Array) -> None:
        if z.ndim == 0 or z.shape[-1] != self.dim:
            raise ValueError(f"z last dimension must equal dim={self.dim}, got shape {z.shape}")

    # -- forward -----------------------------------------------------------------------------

    def __call__(self, z: jax.Array, train: bool = False) -> QuantizerOutput:
        """z: [..., dim] -> quantized (z's dtype, straight-through), indices int32 [...]."""
        check_floating(z)
        self._check_dim(z)
        update = (
            train and self.is_mutable_collection(STATE_COLLECTION) and not self.is_initializing()
        )
        flat = self._lookup_input(z.astype(jnp.float32).reshape(-1, self.dim))
        flat_sg = jax.lax.stop_gradient(flat)

        if self.kmeans_init and update:
            self._maybe_kmeans_init(flat_sg)

        codebook = self.get_codebook()
        if self.entropy_weight > 0:
            distances = squared_distances(flat, codebook)
            indices = first_argmin(jax.lax.stop_gradient(distances))
        else:
            indices = nearest_code(flat_sg, jax.lax.stop_gradient(codebook))
        # [N, D]; gradient reaches the codebook. The indices are in range by construction, so the
        # gather skips the out-of-range fill (a select over all [N, D] values).
        codes = codebook.at[indices].get(mode="promise_in_bounds")

        commitment = jnp.mean((flat - jax.lax.stop_gradient(codes)) ** 2)
        loss = self.beta * commitment
        metrics = {"commitment_loss": commitment}
        if not self.use_ema:
            codebook_loss = jnp.mean((flat_sg - codes) ** 2)
            loss = loss + codebook_loss
            metrics["codebook_loss"] = codebook_loss
        if self.entropy_weight > 0:
            penalty = entropy_penalty(distances, self.entropy_temperature)
            loss = loss + self.entropy_weight * penalty
            metrics["entropy_penalty"] = penalty

        quantized = jax.lax.stop_gradient(codes) + (flat - flat_sg)
        quantized = quantized.reshape(z.shape).astype(z.dtype)
        indices_out = indices.reshape(z.shape[:-1])

        if update:
            self._update_state(flat_sg, indices, metrics)
        metrics.update(codebook_lib.quantizer_batch_metrics(indices, self.codebook_size,
                                                            self.compute_metrics))
        return QuantizerOutput(
            quantized=quantized,
            indices=indices_out,
            loss=loss.astype(jnp.float32),
            metrics=metrics,
        )

    def _maybe_kmeans_init(self, flat: jax.Array) -> None:
        rng = self._rng("kmeans_init")
        raw = jax.lax.stop_gradient(self._raw_codebook())

        def run_kmeans(_):
            return kmeans(
                rng, flat, self.codebook_size, self.kmeans_iterations, normalize=self.l2_normalize
            )

        centres = jax.lax.cond(self.initialized.value, lambda _: raw, run_kmeans, None)
        if self.use_ema:
            # Fresh statistics consistent with the new codes: count 1, sum = code.
            fresh = jnp.logical_not(self.initialized.value)
            self.ema_count.value = jnp.where(fresh, 1.0, self.ema_count.value)
            self.ema_sum.value = jnp.where(fresh, centres, self.ema_sum.value)
        self._set_codes(centres)
        self.initialized.value = jnp.ones((), jnp.bool_)

    def _update_state(self, flat: jax.Array, indices: jax.Array, metrics: dict) -> None:
        """EMA codebook, usage, reseeding and splitting from one batch (flat: [N, D])."""
        counts = jax.ops.segment_sum(
            jnp.ones_like(indices, jnp.float32), indices, self.codebook_size
        )
        if self.use_ema:
            sums = jax.ops.segment_sum(flat, indices, self.codebook_size)
            decay = self.ema_decay
            ema_count = decay * self.ema_count.value + (1.0 - decay) * counts
            ema_sum = decay * self.ema_sum.value + (1.0 - decay) * sums
            total = jnp.sum(ema_count)
            eps = self.ema_epsilon
            smoothed = (ema_count + eps) / (total + self.codebook_size * eps) * total
            self.ema_count.value = ema_count
            self.ema_sum.value = ema_sum
            self.ema_codebook.value = ema_sum / smoothed[:, None]

        if not self._tracks_usage:
            return
        usage = self.usage_decay * self.usage.value + (1.0 - self.usage_decay) * counts
        dead = usage < self.dead_code_threshold
        metrics["dead_codes"] = jnp.sum(dead).astype(jnp.float32)
        raw = self._raw_codebook()
        if self.reseed_dead_codes:
            picks = jax.random.randint(
                self._rng("reseed_dead_codes"), (self.codebook_size,), 0, flat.shape[0]
            )
            raw = jnp.where(dead[:, None], flat[picks], raw)
            if self.use_ema:
                self.ema_count.value = jnp.where(dead, 1.0, self.ema_count.value)
                self.ema_sum.value = jnp.where(dead[:, None], raw, self.ema_sum.value)
            usage = jnp.where(dead, 1.0, usage)
        if self.split_codes:
            raw, usage = self._split(raw, usage)
        self._set_codes(raw)
        self.usage.value = usage

    def _split(self, raw: jax.Array, usage: jax.Array) -> tuple[jax.Array, jax.Array]:
        """While some code's usage is below the threshold, the least used code becomes a
        perturbed copy of the most used one, and both take half of the most used one's usage."""
        rng = self._rng("split_codes")
        ema = self.use_ema
        ema_count = self.ema_count.value if ema else usage
        ema_sum = self.ema_sum.value if ema else raw

        def cond(carry):
            iteration, _, usage, *_ = carry
            return jnp.logical_and(
                iteration < self.codebook_size, jnp.any(usage < self.dead_code_threshold)
            )

        def body(carry):
            iteration, raw, usage, ema_count, ema_sum = carry
            most, least = jnp.argmax(usage), jnp.argmin(usage)
            noise = jax.random.uniform(
                jax.random.fold_in(rng, iteration),
                (self.dim,),
                jnp.float32,
                1.0 - self.split_perturbation,
                1.0 + self.split_perturbation,
            )
            copy = raw[most] * noise
            raw = raw.at[least].set(copy)
            half = usage[most] / 2.0
            usage = usage.at[least].set(half).at[most].set(half)
            if ema:
                count_half = ema_count[most] / 2.0
                ema_count = ema_count.at[least].set(count_half).at[most].set(count_half)
                ema_sum = ema_sum.at[most].set(ema_sum[most] / 2.0).at[least].set(copy * count_half)
            return iteration + 1, raw, usage, ema_count, ema_sum

        _, raw, usage, ema_count, ema_sum = jax.lax.while_loop(
            cond, body, (jnp.zeros((), jnp.int32), raw, usage, ema_count, ema_sum)
        )
        if ema:
            self.ema_count.value = ema_count
            self.ema_sum.value = ema_sum
        return raw, usage

    # -- codes <-> indices ---------------------------------------------------------------------

    def codes_to_indices(self, codes: jax.Array) -> jax.Array:
        """Vectors [..., dim] -> int32 [...] index of the nearest code."""
        self._check_dim(codes)
        # Codes live in the codebook's space: normalised like the codes, never standardised
        # (so indices -> codes -> indices is the identity with `standardize` too).
        flat = codes.astype(jnp.float32).reshape(-1, self.dim)
        if self.l2_normalize:
            flat = l2_normalize(flat)
        return nearest_code(flat, self.get_codebook()).reshape(codes.shape[:-1])

    def indices_to_codes(self, indices: jax.Array) -> jax.Array:
        """int indices [...] -> float32 code vectors [..., dim]."""
        if self.check_indices:
            check_index_range(indices, self.codebook_size)
        return jnp.take(self.get_codebook(), indices.astype(jnp.int32), axis=0)

    def indices_to_quantized(self, indices: jax.Array) -> jax.Array:
        """int indices [...] -> the float32 vectors [..., dim] a decoder takes (here the codes)."""
        return self.indices_to_codes(indices)
