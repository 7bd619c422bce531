"""Compression cost of a token sequence under a trained MaskGIT transformer (FSQ paper, Fig. 3).

The paper's cost is the number of bits needed to code an image's tokens losslessly with the
stage-II transformer under a fixed masking order: reveal the tokens in a fixed order, in
`num_steps` groups whose sizes follow the decoding schedule; each group is coded with the
model's distribution given the class label and the tokens revealed before it. The cost is the
cross-entropy sum of -log2 p(token) over all tokens, in bits per image (softmax over the
codebook entries only, never the special tokens).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from maskgit import masking

ORDERS = ("random", "raster")
# (params, tokens int32 [B, N], labels int32 [B]) -> logits float [B, N, >= K]
LogitsFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


def reveal_counts(seq_len: int, num_steps: int, schedule: str = "cosine") -> np.ndarray:
    """Tokens revealed at each step: int32 [num_steps], every entry >= 1, summing to seq_len.

    As MaskGIT's decoder: after step t, floor(seq_len * gamma((t + 1) / T)) tokens stay masked,
    at least one is revealed per step, and the last step reveals the rest.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len = {seq_len}: must be >= 1")
    if not 1 <= num_steps <= seq_len:
        raise ValueError(f"num_steps = {num_steps}: must be in [1, seq_len={seq_len}]")
    masked = seq_len
    counts = []
    for step in range(num_steps):
        ratio = float(masking.schedule((step + 1) / num_steps, schedule))
        still_masked = math.floor(seq_len * ratio)
        # Reveal >= 1 now and leave >= 1 for each later step; nothing stays after the last.
        still_masked = min(max(still_masked, num_steps - step - 1), masked - 1)
        if step == num_steps - 1:
            still_masked = 0
        counts.append(masked - still_masked)
        masked = still_masked
    return np.asarray(counts, np.int32)


def reveal_order(seq_len: int, order: str = "random", seed: int = 0) -> np.ndarray:
    """Positions in the order they are revealed: int32 [seq_len], a permutation.

    `random`: a fixed permutation drawn from `seed` (the same for every image); `raster`:
    row-major 0, 1, ..., seq_len - 1.
    """
    if order == "raster":
        return np.arange(seq_len, dtype=np.int32)
    if order == "random":
        return np.random.default_rng(seed).permutation(seq_len).astype(np.int32)
    raise ValueError(f"order = {order!r}: one of {ORDERS}")


def reveal_steps(seq_len: int, num_steps: int, *, order: str = "random", seed: int = 0,
                 schedule: str = "cosine") -> np.ndarray:
    """The step at which each position is revealed: int32 [seq_len] with values in [0, T)."""
    counts = reveal_counts(seq_len, num_steps, schedule)
    steps = np.empty(seq_len, np.int32)
    steps[reveal_order(seq_len, order, seed)] = np.repeat(np.arange(num_steps), counts)
    return steps


@functools.partial(jax.jit, static_argnames=("logits_fn", "num_steps", "codebook_size"))
def compression_cost_bits(logits_fn: LogitsFn, params: Any, tokens: jax.Array,
                          labels: jax.Array, reveal_step: jax.Array, *, num_steps: int,
                          codebook_size: int, mask_id: int | jax.Array) -> jax.Array:
    """Bits to code each sequence of `tokens` losslessly with the model: float32 [B].

    Args:
      logits_fn: (params, tokens, labels) -> logits [B, N, K'] with K' >= codebook_size; only
        the first `codebook_size` entries (the image codes) enter the softmax. Must be hashable
        (a function object reused across calls compiles once).
      params: whatever `logits_fn` needs (a pytree).
      tokens: int32 [B, N] image codes in [0, codebook_size).
      labels: int32 [B] class labels given to the model.
      reveal_step: int32 [N], the step (in [0, num_steps)) revealing each position, e.g.
        `reveal_steps(N, num_steps)`.
      num_steps: T, the number of groups.
      codebook_size: K.
      mask_id: the [MASK] token id the model was trained with.

    Returns:
      float32 [B]: sum over all positions of -log2 p(token | class, tokens revealed earlier).
    """
    tokens = tokens.astype(jnp.int32)
    labels = labels.astype(jnp.int32)

    def step_cost(step: jax.Array, total: jax.Array) -> jax.Array:
        visible = (reveal_step < step)[None, :]
        inputs = jnp.where(visible, tokens, mask_id)
        logits = logits_fn(params, inputs, labels)[..., :codebook_size].astype(jnp.float32)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        token_log_probs = jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
        now = (reveal_step == step)[None, :]
        return total - jnp.sum(jnp.where(now, token_log_probs, 0.0), axis=-1) / math.log(2.0)

    return jax.lax.fori_loop(0, num_steps, step_cost, jnp.zeros(tokens.shape[:1], jnp.float32))


def uniform_bits(seq_len: int, codebook_size: int) -> float:
    """The cost of coding without a model: seq_len * log2(codebook_size) bits per image."""
    return float(seq_len * math.log2(codebook_size))


def evaluate_workdir(transformer_workdir: str, *, num_images: int = 0, batch_size: int = 0,
                     num_steps: int = 0, order: str = "random", seed: int = 0,
                     split: str = "validation") -> dict[str, float]:
    """Mean compression cost over `num_images` images of `split`, with a finished stage-II run.

    Args:
      transformer_workdir: a MaskGIT transformer workdir (its checkpoint holds the frozen
        tokenizer; its architecture comes from `tokenizer_workdir/config.json`).
      num_images: images to code (0: the run's `evaluators.num_images`).
      batch_size: images per batch (0: the run's `evaluators.batch_size`).
      num_steps: groups of the masking order (0: the run's `sampling.num_steps`, capped at the
        sequence length).
      order: `random` (a fixed permutation from `seed`) or `raster`.
      split: the data split to code.

    Returns:
      {"compression_bits": mean bits per image, "bits_per_token", "uniform_bits" (N log2 K),
       "num_images", "seq_len", "codebook_size", "num_steps"}.
    """
    import itertools

    from fsq_jax import data
    from maskgit import tasks

    if order not in ORDERS:
        raise ValueError(f"order = {order!r}: one of {ORDERS}")
    try:
        task, restored = tasks.TransformerTask.from_workdir(transformer_workdir)
    except FileNotFoundError as error:
        raise ValueError(f"transformer_workdir = {transformer_workdir!r}: {error}") from None
    config = task.config
    frozen = task.tokenizer_variables()
    params = (restored["ema_params"] or restored["params"])["transformer"]
    num_images = int(num_images or config.evaluators.num_images)
    batch_size = int(batch_size or config.evaluators.batch_size)
    if num_images < 1:
        raise ValueError(f"num_images = {num_images}: must be >= 1")
    if batch_size < 1:
        raise ValueError(f"batch_size = {batch_size}: must be >= 1")
    steps = int(num_steps or min(int(config.sampling.num_steps), task.seq_len))
    reveal = jnp.asarray(reveal_steps(task.seq_len, steps, order=order, seed=seed,
                                      schedule=config.sampling.schedule))
    model = task.model
    tokenize = jax.jit(task.tokenize)

    def logits_fn(p: Any, tokens: jax.Array, labels: jax.Array) -> jax.Array:
        return model.apply({"params": p}, tokens, labels, train=False)

    batches = itertools.islice(data.build(config.data, split, batch_size, shuffle=False),
                               math.ceil(num_images / batch_size))
    costs = []
    for batch in batches:
        tokens = tokenize(frozen, jnp.asarray(batch["image"]))
        costs.append(np.asarray(compression_cost_bits(
            logits_fn, params, tokens, jnp.asarray(batch["label"]), reveal, num_steps=steps,
            codebook_size=task.codebook_size, mask_id=task.mask_id)))
    bits = np.concatenate(costs)[:num_images]
    mean = float(np.mean(bits))
    return {"compression_bits": mean, "bits_per_token": mean / task.seq_len,
            "uniform_bits": uniform_bits(task.seq_len, task.codebook_size),
            "num_images": int(bits.size), "seq_len": int(task.seq_len),
            "codebook_size": int(task.codebook_size), "num_steps": steps}
