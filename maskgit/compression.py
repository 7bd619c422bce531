"""Compression cost of a token sequence under a trained MaskGIT transformer (FSQ paper, Fig. 3).

The paper's cost is the number of bits needed to code an image's tokens losslessly with the
stage-II transformer under "the deterministic masking schedule employed in M2T" (Sec. 4.2; M2T =
Mentzer, Agustsson, Tschannen 2023, Sec. 3.4, main results with alpha = 2.2 and S = 12 steps):

* locations, QLDS: the positions in the order a 2-D low-discrepancy sequence (Roberts' R2,
  x_n = (0.5 + n / g, 0.5 + n / g^2) mod 1, g the plastic number) first visits their cells of
  the token grid;
* group sizes, the power schedule: after step t of T, floor(N (t / T)^alpha) tokens are revealed.

Each group is coded with the model's distribution given the class label and the tokens revealed
before it; the cost is the sum of -log2 p(token) over all tokens, in bits per image (softmax over
the codebook entries only, never the special tokens). Orders `random` (a seeded permutation,
M2T's "random" schedule) and `raster` are kept for comparison.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ORDERS = ("qlds", "random", "raster")
M2T_ALPHA = 2.2  # M2T's group-size exponent of its main results (Sec. 4, "we fix alpha=2.2")
# The plastic number g (g^3 = g + 1), whose inverse powers are the R2 sequence's increments.
PLASTIC_NUMBER = 1.32471795724474602596
# (params, tokens int32 [B, N], labels int32 [B]) -> logits float [B, N, >= K]
LogitsFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


def reveal_counts(seq_len: int, num_steps: int, alpha: float = M2T_ALPHA) -> np.ndarray:
    """Tokens revealed at each step: int32 [num_steps], every entry >= 1, summing to seq_len.

    M2T's power schedule: floor(seq_len * (t / T)^alpha) tokens are revealed after step t
    (t = 1 ... T), at least one more per step and all after the last.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len = {seq_len}: must be >= 1")
    if not 1 <= num_steps <= seq_len:
        raise ValueError(f"num_steps = {num_steps}: must be in [1, seq_len={seq_len}]")
    if not alpha > 0:
        raise ValueError(f"alpha = {alpha}: must be > 0")
    revealed, counts = 0, []
    for step in range(1, num_steps + 1):
        target = math.floor(seq_len * (step / num_steps) ** alpha)
        # At least one now, and one left for each later step; everything after the last.
        target = min(max(target, revealed + 1), seq_len - (num_steps - step))
        counts.append(target - revealed)
        revealed = target
    return np.asarray(counts, np.int32)


def qlds_order(grid: tuple[int, int]) -> np.ndarray:
    """M2T's quantized low-discrepancy sequence over an h x w grid: the flat (row-major)
    positions in the order the R2 sequence first lands in their cells. int32 [h * w]."""
    height, width = grid
    if height < 1 or width < 1:
        raise ValueError(f"grid = {grid}: both sides must be >= 1")
    step = np.asarray([1.0 / PLASTIC_NUMBER, 1.0 / PLASTIC_NUMBER**2])
    seen = np.zeros(height * width, bool)
    order = []
    n = 0
    while len(order) < height * width:
        n += 1
        if n > 1000 * height * width:  # R2 is equidistributed: never reached in practice
            raise RuntimeError(f"qlds_order{grid}: the sequence left cells unvisited")
        point = np.mod(0.5 + n * step, 1.0)
        cell = int(point[0] * height) * width + int(point[1] * width)
        if not seen[cell]:
            seen[cell] = True
            order.append(cell)
    return np.asarray(order, np.int32)


def reveal_order(grid: tuple[int, int], order: str = "qlds", seed: int = 0) -> np.ndarray:
    """Positions of an h x w token grid (row-major) in the order they are revealed: int32
    [h * w], a permutation, the same for every image.

    `qlds`: M2T's quantized low-discrepancy sequence (`qlds_order`); `random`: a permutation
    drawn from `seed`; `raster`: 0, 1, ..., h * w - 1.
    """
    seq_len = int(grid[0] * grid[1])
    if order == "qlds":
        return qlds_order(grid)
    if order == "raster":
        return np.arange(seq_len, dtype=np.int32)
    if order == "random":
        return np.random.default_rng(seed).permutation(seq_len).astype(np.int32)
    raise ValueError(f"order = {order!r}: one of {ORDERS}")


def reveal_steps(grid: tuple[int, int], num_steps: int, *, order: str = "qlds", seed: int = 0,
                 alpha: float = M2T_ALPHA) -> np.ndarray:
    """The step at which each position of the grid (row-major) is revealed: int32 [h * w] with
    values in [0, T); step t reveals the next `reveal_counts(...)[t]` positions of the order."""
    counts = reveal_counts(int(grid[0] * grid[1]), num_steps, alpha)
    steps = np.empty(int(grid[0] * grid[1]), np.int32)
    steps[reveal_order(grid, order, seed)] = np.repeat(np.arange(num_steps), counts)
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
        `reveal_steps((h, w), num_steps)`.
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
                     num_steps: int = 0, order: str = "qlds", seed: int = 0,
                     alpha: float = M2T_ALPHA, split: str = "validation") -> dict[str, float]:
    """Mean compression cost over `num_images` images of `split`, with a finished stage-II run.

    Args:
      transformer_workdir: a MaskGIT transformer workdir (its checkpoint holds the frozen
        tokenizer; its architecture comes from `tokenizer_workdir/config.json`).
      num_images: images to code (0: the run's `evaluators.num_images`).
      batch_size: images per batch (0: the run's `evaluators.batch_size`).
      num_steps: groups of the masking order (0: the run's `sampling.num_steps`, capped at the
        sequence length).
      order: `qlds` (M2T's), `random` (a fixed permutation from `seed`) or `raster`.
      alpha: exponent of the group sizes (M2T's power schedule).
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
    reveal = jnp.asarray(reveal_steps(task.grid, steps, order=order, seed=seed, alpha=alpha))
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
            "codebook_size": int(task.codebook_size), "num_steps": steps, "order": order,
            "alpha": float(alpha)}
