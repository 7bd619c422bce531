"""Gradient accumulation: one optimiser step's batch computed as `steps` micro-batches in turn.

A task's step is the mean over its batch; splitting the batch into `steps` equal micro-batches
and averaging their means gives the same value (and, by linearity, the same gradients) for any
model without batch statistics, while XLA keeps the activations of one micro-batch at a time.
The optimiser still sees the whole batch (`config.batch_size`), once per step.

Micro-batch j holds the rows r with r % steps == j, so with the batch sharded over devices
(device-major rows) every device holds an equal share of every micro-batch and no data moves
between devices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

Carry = TypeVar("Carry")


def split_micro_batches(batch: Any, steps: int) -> Any:
    """Every leaf [B, ...] -> [steps, B / steps, ...]; micro-batch j = rows j, j + steps, ...

    ValueError naming the leaf when B is not a multiple of `steps`."""
    def split(path: Any, x: jax.Array) -> jax.Array:
        if x.shape[0] % steps:
            raise ValueError(f"batch {jax.tree_util.keystr(path)}: {x.shape[0]} examples do not "
                             f"split into {steps} equal micro-batches")
        return jnp.swapaxes(x.reshape((x.shape[0] // steps, steps, *x.shape[1:])), 0, 1)

    return jax.tree_util.tree_map_with_path(split, batch)


def accumulate(fn: Callable[[Carry, Any, jax.Array], tuple[Carry, Any]], carry: Carry,
               batch: Any, steps: int) -> tuple[Carry, Any]:
    """The mean of `fn`'s outputs over `steps` micro-batches of `batch`, computed in turn.

    Args:
      fn: (carry, micro_batch, index) -> (carry, outputs): outputs a pytree of float arrays
        (gradients, metrics), averaged over the micro-batches; carry threads state (e.g. a
        quantizer's EMA codebook) from one micro-batch to the next. index: int32 scalar.
      carry: the initial carry.
      batch: pytree of arrays [B, ...], B a multiple of `steps`.
      steps: number of micro-batches; 1 calls `fn(carry, batch, 0)` as it is.

    Returns:
      (the last carry, the mean outputs).
    """
    if steps == 1:
        return fn(carry, batch, jnp.zeros((), jnp.int32))
    micro = split_micro_batches(batch, steps)
    first = jax.tree.map(lambda x: x[0], micro)
    shapes = jax.eval_shape(lambda: fn(carry, first, jnp.zeros((), jnp.int32))[1])
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def body(state: tuple[Carry, Any], inputs: tuple[Any, jax.Array]
             ) -> tuple[tuple[Carry, Any], None]:
        carry, total = state
        micro_batch, index = inputs
        carry, outputs = fn(carry, micro_batch, index)
        return (carry, jax.tree.map(jnp.add, total, outputs)), None

    (carry, total), _ = jax.lax.scan(body, (carry, zeros),
                                     (micro, jnp.arange(steps, dtype=jnp.int32)))
    return carry, jax.tree.map(lambda t: t / steps, total)


__all__ = ("accumulate", "split_micro_batches")
