"""Evaluation as the loop runs it: the context every evaluator receives, and the eval-step average.

Evaluators (FID, codebook usage, PQ, ...) do not build their own data, devices or randomness: the
loop hands each one an `EvalContext` with the run's mesh, an evaluation rng folded from the run's
seed and step, and the task's own data function, read once in order, without shuffling, this
process's share of each global batch.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import jax
import ml_collections
import numpy as np

from fsq_jax.train import sharding as sharding_lib

DataFn = Callable[..., Iterator[Mapping[str, np.ndarray]]]


@dataclasses.dataclass(frozen=True)
class EvalContext:
    """What the loop gives an evaluator.

    Attributes:
      mesh: the run's device mesh (batches are split over its `data` axis).
      rng: the evaluation key of this step; fold in a batch index for per-batch keys.
      step: the training step being evaluated.
      data_fn: the task's data function (`fsq_jax.data.build`'s signature).
      data_config: the run's `data` section.
    """

    mesh: jax.sharding.Mesh
    rng: jax.Array
    step: int
    data_fn: DataFn
    data_config: ml_collections.ConfigDict

    def batches(self, batch_size: int, num_examples: int, split: str = "validation"
                ) -> Iterator[dict[str, np.ndarray]]:
        """`num_examples` examples of `split` in global batches of `batch_size` (the last one
        cut short), in order, unshuffled; each process gets its share of every batch."""
        if num_examples < 1 or batch_size < 1:
            raise ValueError(f"batches: num_examples = {num_examples} and batch_size = "
                             f"{batch_size} must be >= 1")
        stream = self.data_fn(self.data_config, split, batch_size, shuffle=False,
                              process_index=jax.process_index(),
                              process_count=jax.process_count())
        left = num_examples
        for batch in itertools.islice(stream, math.ceil(num_examples / batch_size)):
            local = math.ceil(min(left, batch_size) / jax.process_count())
            yield {k: np.asarray(v)[:local] for k, v in batch.items()}
            left -= batch_size

    def batch_rng(self, index: int) -> jax.Array:
        """The key of evaluation batch `index` (the same for every process)."""
        return jax.random.fold_in(self.rng, index)

    def run(self, fn: Callable[..., Any], replicated: Sequence[Any], batch: np.ndarray,
            *extra: Any) -> np.ndarray:
        """`fn(*replicated, batch, *extra)` with `batch` split over the mesh (padded to the
        device count, the padding cut from the host result)."""
        return run_sharded(fn, replicated, batch, *extra, mesh=self.mesh)


def run_sharded(fn: Callable[..., Any], replicated: Sequence[Any], batch: Any, *extra: Any,
                mesh: jax.sharding.Mesh | None = None) -> Any:
    """Runs `fn(*replicated, batch, *extra)` with this process's `batch` (an array or a dict of
    arrays) sharded over `mesh` (default: every device); returns this process's rows of the
    result (any pytree of arrays with a leading batch axis) as host numpy."""
    mesh = sharding_lib.create_mesh() if mesh is None else mesh
    named = batch if isinstance(batch, Mapping) else {"x": batch}
    named = {k: np.asarray(v) for k, v in named.items()}
    count = len(next(iter(named.values())))
    devices = len(mesh.local_devices)
    padded = math.ceil(count / devices) * devices
    if padded > count:
        named = {k: np.concatenate([v, np.repeat(v[-1:], padded - count, axis=0)])
                 for k, v in named.items()}
    sharded = sharding_lib.shard_batch(named, mesh)
    out = sharding_lib.to_host(fn(*replicated, sharded if isinstance(batch, Mapping)
                                  else sharded["x"], *extra))
    start = jax.process_index() * padded
    return jax.tree.map(lambda leaf: np.asarray(leaf)[start:start + count], out)


@runtime_checkable
class Evaluator(Protocol):
    """Computes final metrics of a state (FID, PQ, codebook usage, ...)."""

    name: str

    def run(self, state: Any, context: EvalContext) -> Iterator[tuple[str, float]]:
        """Yields `(metric name, value)` pairs."""
        ...


@dataclasses.dataclass(frozen=True)
class SkippedEvaluator:
    """An evaluator the config asks for that cannot run here (FID without the Inception
    weights): it yields nothing, and `skipped_metrics` reports its metrics with the reason, so
    a run's results say what is missing and why instead of simply lacking it."""

    name: str
    metrics: tuple[str, ...]
    reason: str

    def run(self, state: Any, context: EvalContext) -> Iterator[tuple[str, float]]:
        del state, context
        return iter(())


def skipped_metrics(evaluators: Sequence[Evaluator]) -> dict[str, str]:
    """`{"<evaluator name>/<metric>": reason}` of the skipped evaluators among `evaluators`."""
    return {f"{e.name}/{metric}": e.reason for e in evaluators
            if isinstance(e, SkippedEvaluator) for metric in e.metrics}


def run_evaluators(evaluators: Sequence[Evaluator], state: Any, context: EvalContext
                   ) -> dict[str, float]:
    """`{"<evaluator name>/<metric>": value}` of every evaluator."""
    values = {}
    for evaluator in evaluators:
        for name, value in evaluator.run(state, context):
            values[f"{evaluator.name}/{name}"] = float(value)
    return values


def average_eval_steps(evaluate: Callable[..., Mapping[str, Any]], state: Any,
                       context: EvalContext, batch_size: int, num_batches: int
                       ) -> tuple[dict[str, float], Mapping[str, jax.Array] | None]:
    """The task's jitted eval step averaged over `num_batches` validation batches; also the first
    batch (on the mesh) for pictures."""
    totals: dict[str, float] = {}
    first = None
    if num_batches == 0:
        return totals, first
    batches = context.batches(batch_size, batch_size * num_batches)
    for index, host_batch in enumerate(batches):
        if len(next(iter(host_batch.values()))) * jax.process_count() < batch_size:
            raise RuntimeError(f"the 'validation' data has fewer than eval_steps={num_batches} "
                               f"batches of {batch_size}")
        batch = sharding_lib.shard_batch(host_batch, context.mesh)
        first = batch if first is None else first
        metrics = sharding_lib.to_host(evaluate(state, batch, context.batch_rng(index)))
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + float(value)
    return {name: value / max(num_batches, 1) for name, value in totals.items()}, first


def context_for(config: ml_collections.ConfigDict, step: int = 0, *,
                data_fn: DataFn | None = None, mesh: jax.sharding.Mesh | None = None
                ) -> EvalContext:
    """The context the loop would give the evaluators of `config` at `step` (for tools that
    evaluate outside a training run): every device, `fsq_jax.data.build`, the run's eval rng."""
    if data_fn is None:
        from fsq_jax import data

        data_fn = data.build
    eval_rng = jax.random.split(jax.random.PRNGKey(config.seed), 4)[2]
    return EvalContext(sharding_lib.create_mesh() if mesh is None else mesh,
                       jax.random.fold_in(eval_rng, step), step, data_fn, config.data)
