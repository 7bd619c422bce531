"""MaskGIT parallel decoding with classifier-free guidance, one `lax.fori_loop` end to end.

Start fully masked; at each of T steps predict every masked token, keep the most confident ones
and re-mask the rest so that gamma((t+1)/T) * N stay masked (cosine schedule). Confidence is the
sampled token's log-probability plus Gumbel noise whose temperature anneals linearly to 0; tokens
already fixed are never re-masked or changed, and the last step leaves no token masked.

Guidance (FSQ paper Sec. 4.3, as MAGVIT's maskgvt_train_lib.py decode_fn_with_guidance):
logits = cond + scale * (cond - uncond), where uncond is the pass with the [MASK] token in the
class position (`masking.UNCONDITIONAL`), the input label dropout trains. scale = 0 is the purely
conditional model; the FSQ paper's "guidance weight 0.1 (VQ) / 0.2 (FSQ)" is this scale.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from fsq_jax.config_lib import require
from maskgit import masking

LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """`sampling.*`: MaskGIT's parallel decoding (google-research/maskgit `libml/parallel_decode.py`
    and `configs/maskgit_class_cond_config.py`: 12 steps, cosine, choice temperature 4.5)."""

    num_steps: int
    schedule: masking.Schedule
    choice_temperature: float  # Gumbel noise scale on confidences at step 0, annealed to 0
    temperature: float  # softmax temperature of token sampling
    guidance_scale: float  # logits = cond + scale * (cond - uncond); 0 = no guidance

    def __post_init__(self):
        require(self.num_steps >= 1, "num_steps", "must be >= 1")
        require(self.choice_temperature >= 0, "choice_temperature", "must be >= 0")
        require(self.temperature > 0, "temperature", "must be > 0")
        require(self.guidance_scale >= 0, "guidance_scale", "must be >= 0")


def guided_logits(cond: jax.Array, uncond: jax.Array, scale: float | jax.Array) -> jax.Array:
    """cond + scale * (cond - uncond); exactly `cond` when scale == 0. Shapes [B, N, K]."""
    return cond + scale * (cond - uncond)


def guided_logits_fn(logits_fn: LogitsFn,
                     guidance_scale: float | jax.Array | None) -> LogitsFn:
    """Wraps a conditional logits function with classifier-free guidance.

    `guidance_scale=None` returns `logits_fn` itself (one forward pass, conditional only);
    otherwise the conditional pass and the unconditional one (labels `masking.UNCONDITIONAL`,
    the class token masked) run as one batch of 2B.
    """
    if guidance_scale is None:
        return logits_fn

    def fn(tokens: jax.Array, labels: jax.Array) -> jax.Array:
        batch = tokens.shape[0]
        both = logits_fn(
            jnp.concatenate([tokens, tokens], axis=0),
            jnp.concatenate([labels, jnp.full_like(labels, masking.UNCONDITIONAL)], axis=0),
        )
        return guided_logits(both[:batch], both[batch:], guidance_scale)

    return fn


def decode(
    logits_fn: LogitsFn,
    labels: jax.Array,
    rng: jax.Array,
    *,
    seq_len: int,
    mask_id: int,
    num_steps: int = 12,
    schedule: str = "cosine",
    choice_temperature: float = 4.5,
    temperature: float = 1.0,
    return_history: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Generates token sequences from nothing (all masked) in `num_steps` parallel steps.

    Args:
      logits_fn: (tokens int32 [B, N], labels int32 [B]) -> logits [B, N, K] (guided or not).
      labels: int32 [B] class per sample.
      rng: PRNG key.
      seq_len: N tokens per sample; mask_id: the [MASK] id (ids >= K never get sampled).
      return_history: also return the tokens after every step, int32 [T, B, N].

    Returns:
      int32 [B, N] tokens in [0, K) (and the history when asked).
    """
    if num_steps < 1:
        raise ValueError(f"sampling.num_steps = {num_steps}: must be >= 1")
    batch = labels.shape[0]
    tokens = jnp.full((batch, seq_len), mask_id, jnp.int32)
    history = jnp.zeros((num_steps, batch, seq_len), jnp.int32)
    # Decoding starts fully masked, so MaskGIT's "unknown at the beginning" count is seq_len.
    unknown_at_start = seq_len

    def step_fn(step: jax.Array, carry: tuple[jax.Array, jax.Array]
                ) -> tuple[jax.Array, jax.Array]:
        tokens, history = carry
        step_rng = jax.random.fold_in(rng, step)
        sample_rng, choice_rng = jax.random.split(step_rng)
        logits = logits_fn(tokens, labels).astype(jnp.float32) / temperature
        sampled = jax.random.categorical(sample_rng, logits).astype(jnp.int32)
        unknown = tokens == mask_id
        sampled = jnp.where(unknown, sampled, tokens)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        selected = jnp.take_along_axis(log_probs, sampled[..., None], axis=-1)[..., 0]

        progress = (step + 1).astype(jnp.float32) / num_steps
        ratio = masking.schedule(progress, schedule)
        mask_len = jnp.floor(unknown_at_start * ratio).astype(jnp.int32)
        num_unknown = jnp.sum(unknown, axis=-1)
        # Unmask at least one token per step and keep at least one masked until the last step.
        mask_len = jnp.clip(mask_len, 1, num_unknown - 1)
        mask_len = jnp.where(step == num_steps - 1, 0, mask_len)

        noise_scale = choice_temperature * (1.0 - progress)
        confidence = selected + noise_scale * jax.random.gumbel(choice_rng, selected.shape)
        confidence = jnp.where(unknown, confidence, jnp.inf)  # fixed tokens are never re-masked
        ranks = jnp.argsort(jnp.argsort(confidence, axis=-1), axis=-1)
        remask = ranks < mask_len[:, None]
        tokens = jnp.where(remask, mask_id, sampled)
        history = jax.lax.dynamic_update_index_in_dim(history, tokens, step, axis=0)
        return tokens, history

    tokens, history = jax.lax.fori_loop(0, num_steps, step_fn, (tokens, history))
    return (tokens, history) if return_history else tokens


def sample_tokens(
    logits_fn: LogitsFn,
    labels: jax.Array,
    rng: jax.Array,
    config: ml_collections.ConfigDict,
    *,
    seq_len: int,
    mask_id: int,
) -> jax.Array:
    """`decode` with classifier-free guidance and the schedule from `config` (`sampling.*`).

    A guidance scale of exactly 0 skips the unconditional pass (identical result, half the work).
    Returns int32 [B, N].
    """
    scale = float(config.guidance_scale)
    fn = guided_logits_fn(logits_fn, scale if scale != 0.0 else None)
    return decode(
        fn, labels, rng, seq_len=seq_len, mask_id=mask_id, num_steps=int(config.num_steps),
        schedule=config.schedule, choice_temperature=float(config.choice_temperature),
        temperature=float(config.temperature),
    )
