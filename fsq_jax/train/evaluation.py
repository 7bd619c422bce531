"""Evaluation as the loop runs it: the context every evaluator receives, and the eval-step average.

Evaluators (FID, codebook usage, PQ, ...) do not build their own data, devices or randomness: the
loop hands each one an `EvalContext` with the run's mesh, an evaluation rng folded from the run's
seed and step, and the task's own data function. `context.batches` reads a split exactly once:
in order, without shuffling or augmentation, this process's share of each global batch, the last
global batch padded to full size and `batch["mask"]` marking the real examples, so every example
is scored once whatever the host and device counts. Accumulators see only real examples:
`context.real` keeps this process's real rows, `context.gather` every process's (in order).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import jax
import ml_collections
import numpy as np

from fsq_jax.data.pipeline import MASK_KEY, EvaluationStream, evaluation_mask
from fsq_jax.train import sharding as sharding_lib

DataFn = Callable[..., Iterator[Mapping[str, np.ndarray]]]
Tree = TypeVar("Tree")


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

    def batches(self, batch_size: int, num_examples: int | None = None,
                split: str = "validation") -> EvaluationStream:
        """Every example of `split` (or its first `num_examples`) exactly once, in order, without
        augmentation, in global batches of `batch_size`; this process gets its slice of each, and
        the last global batch is padded to full size, `batch["mask"]` (bool [local]) marking
        the real rows. The data function is called with `evaluation=True` (see
        `fsq_jax.data.build`); batches of a stand-in data function without that mode (no
        `mask`) count as real up to `num_examples`, which it then needs. The stream's
        `num_examples` is the pass's real examples over all processes (None if unknown)."""
        if batch_size < 1 or (num_examples is not None and num_examples < 1):
            raise ValueError(f"batches: num_examples = {num_examples} and batch_size = "
                             f"{batch_size} must be >= 1")
        stream = self.data_fn(self.data_config, split, batch_size, evaluation=True,
                              num_examples=num_examples, process_index=jax.process_index(),
                              process_count=jax.process_count())
        total = getattr(stream, "num_examples", num_examples)
        return EvaluationStream(self._masked(stream, batch_size, num_examples, split), total,
                                getattr(stream, "num_batches", None))

    @staticmethod
    def _masked(stream: Iterator[Mapping[str, np.ndarray]], batch_size: int,
                num_examples: int | None, split: str) -> Iterator[dict[str, np.ndarray]]:
        for step, batch in enumerate(stream):
            batch = {key: np.asarray(value) for key, value in batch.items()}
            if MASK_KEY not in batch:
                if num_examples is None:
                    raise ValueError(f"batches of {split!r}: the data function has no evaluation "
                                     "mode (its batches have no 'mask'), so give num_examples")
                if step * batch_size >= num_examples:
                    return
                rows = len(next(iter(batch.values())))
                batch[MASK_KEY] = evaluation_mask(step, rows * jax.process_count(), num_examples,
                                                  jax.process_index(), jax.process_count())
            yield batch

    def real(self, tree: Tree, batch: Mapping[str, np.ndarray] | None = None) -> Tree:
        """The real rows of `tree` (a host batch, or any pytree of host arrays with one row per
        row of `batch`): `batch`'s mask (default: `tree`'s own) selects along axis 0."""
        mask = np.asarray((tree if batch is None else batch)[MASK_KEY], bool)
        return jax.tree.map(lambda leaf: np.asarray(leaf)[mask], tree)

    def gather(self, tree: Tree, batch: Mapping[str, np.ndarray]) -> Tree:
        """The real rows of every process's `tree` (one row per row of its `batch`), concatenated
        in process order, i.e. in split order; the same on every process. A collective: every
        process calls it with arrays of the same shape (float32, integer or bool leaves)."""
        if jax.process_count() == 1:
            return self.real(tree, batch)
        from jax.experimental import multihost_utils

        mask = multihost_utils.process_allgather(
            np.asarray(batch[MASK_KEY], np.uint8), tiled=True).astype(bool)
        return jax.tree.map(
            lambda leaf: np.asarray(multihost_utils.process_allgather(np.asarray(leaf),
                                                                      tiled=True))[mask], tree)

    def count(self, batch: Mapping[str, np.ndarray]) -> int:
        """Real examples in the global batch whose slice `batch` is (a collective)."""
        return every_process_sum(int(np.sum(batch[MASK_KEY])))

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


def every_process_sum(value: int) -> int:
    """The sum of `value` over all processes (a collective; `value` itself with one process)."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    return int(np.sum(multihost_utils.process_allgather(np.int32(value))))


def every_process(flag: bool) -> bool:
    """Whether `flag` holds on every process (a collective), e.g. a cache file found by all, so
    all of them take the same branch and no collective is left waiting."""
    return every_process_sum(int(bool(flag))) == jax.process_count()


@runtime_checkable
class Evaluator(Protocol):
    """Computes final metrics of a state (FID, PQ, codebook usage, ...)."""

    name: str

    def run(self, state: Any, context: EvalContext) -> Iterator[tuple[str, float]]:
        """Yields `(metric name, value)` pairs, among them `num_examples`: how many examples
        (over all processes) it scored."""
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
    """The task's jitted eval step averaged over the first `num_batches` validation batches;
    also the first batch (on the mesh) for pictures.

    Eval-step metrics are batch statistics (means, perplexities), which padding would bias and
    no mask can undo, so every batch must be full: a split with fewer than
    `num_batches * batch_size` examples is an error naming both numbers."""
    totals: dict[str, float] = {}
    first = None
    if num_batches == 0:
        return totals, first
    batches = context.batches(batch_size, batch_size * num_batches)
    seen = 0
    for index, host_batch in enumerate(batches):
        seen += context.count(host_batch)
        if seen < (index + 1) * batch_size:
            raise RuntimeError(f"eval_steps={num_batches} batches of {batch_size} need "
                               f"{num_batches * batch_size} examples, but the 'validation' data "
                               f"has {seen}")
        host_batch = {k: v for k, v in host_batch.items() if k != MASK_KEY}
        batch = sharding_lib.shard_batch(host_batch, context.mesh)
        first = batch if first is None else first
        metrics = sharding_lib.to_host(evaluate(state, batch, context.batch_rng(index)))
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + float(value)
    if seen < num_batches * batch_size:
        raise RuntimeError(f"eval_steps={num_batches} batches of {batch_size} need "
                           f"{num_batches * batch_size} examples, but the 'validation' data has "
                           f"{seen}")
    return {name: value / num_batches for name, value in totals.items()}, first


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
