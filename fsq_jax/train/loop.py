"""The shared training loop: jit on a device mesh, checkpoints, metrics, evaluation, guards.

Tasks supply pure `init_state` / `train_step` / `eval_step`; this module owns everything around
them. Runs resume exactly: the rng of step s is `fold_in(base, s)` and the data stream restarts at
the restored step, so an interrupted and an uninterrupted run end with identical params on CPU.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fsq_jax.train import sharding as sharding_lib
from fsq_jax.train.checkpoint import Checkpointer, CheckpointReader, state_to_tree, tree_to_state
from fsq_jax.train.config_check import ConfigError, validate_config
from fsq_jax.train.progress import Progress, format_duration
from fsq_jax.train.state import TrainState
from fsq_jax.train.workdir import WorkdirLock

DataFn = Callable[..., Iterator[Mapping[str, np.ndarray]]]
CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
EVALUATION_FILE = "evaluation.json"  # written by `evaluate`, which leaves results.json alone
CHECKPOINT_DIR = "checkpoints"


class NonFiniteError(FloatingPointError):
    """A step produced NaN/Inf in a metric or in the params (with `nan_policy="stop"`)."""

    def __init__(self, step: int, names: list[str]):
        self.step = step
        self.names = list(names)
        super().__init__(
            f"non-finite value (NaN/Inf) at step {step} in {', '.join(names)}; "
            "stopped without applying "
            "the update, the last good checkpoint is kept (set nan_policy='skip' to skip such "
            "updates instead)"
        )


def load_task(config: ml_collections.ConfigDict) -> Any:
    """Imports `config.task` ("module.path:ClassName") and returns `ClassName(config)`."""
    spec = config.get("task", None)
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ConfigError(f"config.task = {spec!r}: must be 'module.path:ClassName'")
    module_name, class_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ConfigError(
            f"config.task = {spec!r}: cannot import module {module_name!r} ({e})"
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigError(f"config.task = {spec!r}: module {module_name!r} has no {class_name!r}")
    return cls(config)


def _default_data_fn() -> DataFn:
    from fsq_jax import data

    return data.build


class _StopSignal:
    """Turns SIGTERM (and SIGINT) into a flag the loop polls; restores handlers on exit."""

    def __init__(self):
        self._event = threading.Event()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self._event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        logging.warning("received signal %d: checkpointing and stopping", signum)
        self._event.set()

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self) -> bool:
        local = self._event.is_set()
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray(local, np.int32))
        return bool(np.any(flags))


def _write_json(path: str, value: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _scalar_metrics(metrics: Mapping[str, Any], where: str) -> dict[str, jax.Array]:
    out = {}
    for name, value in metrics.items():
        value = jnp.asarray(value)
        if value.ndim != 0:
            raise ValueError(
                f"{where} returned metric {name!r} with shape {value.shape}; "
                "metrics must be scalars"
            )
        out[name] = value.astype(jnp.float32)
    return out


def _finite_flags(
    metrics: Mapping[str, jax.Array], params: Mapping[str, Any]
) -> tuple[list[str], jax.Array]:
    """Names and a bool vector: True where that metric (or param group) is non-finite."""
    names, flags = [], []
    for name, value in sorted(metrics.items()):
        names.append(f"metric '{name}'")
        flags.append(~jnp.isfinite(value))
    for group, tree in sorted(params.items()):
        leaves = [leaf for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
        finite = (
            jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))
            if leaves
            else jnp.asarray(True)
        )
        names.append(f"params['{group}'] (after the update)")
        flags.append(~finite)
    return names, jnp.stack(flags) if flags else jnp.zeros((0,), bool)


class CompiledSteps:
    """The loop's jitted steps of a task on a mesh (also used by benchmarks/sharding.py).

    `train(state, batch, base_rng) -> (state, metrics, nonfinite_flags)`: runs
    `task.train_step` with rng `fold_in(base_rng, state.step)`, never applies an update with
    NaN/Inf in a metric or the new params (the step still advances), donates `state`.
    `evaluate(state, batch, rng) -> metrics`. `flag_names` names the flags after tracing.
    """

    def __init__(self, task: Any, state_sharding: Any, mesh: jax.sharding.Mesh):
        self.flag_names: list[str] = []
        replicated = sharding_lib.replicated(mesh)
        data = sharding_lib.batch_sharding(mesh)

        def train(state, batch, base_rng):
            rng = jax.random.fold_in(base_rng, state.step)
            new_state, metrics = task.train_step(state, batch, rng)
            metrics = _scalar_metrics(metrics, "train_step")
            names, flags = _finite_flags(metrics, new_state.params)
            self.flag_names = names
            bad = jnp.any(flags)
            # A bad update is never applied; the step still advances (the batch is consumed).
            kept = jax.tree.map(lambda new, old: jnp.where(bad, old, new), new_state, state)
            kept = kept.replace(step=state.step + 1)
            return kept, metrics, flags

        def evaluate(state, batch, rng):
            return _scalar_metrics(task.eval_step(state, batch, rng), "eval_step")

        self.train = jax.jit(
            train,
            in_shardings=(state_sharding, data, replicated),
            out_shardings=(state_sharding, replicated, replicated),
            donate_argnums=(0,),
        )
        self.evaluate = jax.jit(
            evaluate, in_shardings=(state_sharding, data, replicated), out_shardings=replicated
        )


def _abstract_state(
    task: Any, rng: jax.Array, batch: Mapping[str, jax.Array], mesh: jax.sharding.Mesh, fsdp: bool
) -> tuple[Any, Any]:
    abstract = jax.eval_shape(task.init_state, rng, batch)
    if not isinstance(abstract, TrainState):
        raise TypeError(
            f"task.init_state must return fsq_jax.train.TrainState, got {type(abstract).__name__}"
        )
    shardings = sharding_lib.state_shardings(abstract, mesh, fsdp)
    with_shardings = jax.tree.map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
        abstract,
        shardings,
    )
    return with_shardings, shardings


def _is_due(step: int, period: int, total_steps: int) -> bool:
    return step == total_steps or (period > 0 and step % period == 0)


def _data_iterator(
    data_fn: DataFn,
    config: ml_collections.ConfigDict,
    split: str,
    global_batch_size: int,
    mesh: jax.sharding.Mesh,
    start_step: int,
) -> Iterator[Mapping[str, np.ndarray]]:
    sharding_lib.local_batch_size(global_batch_size, mesh)  # checks divisibility
    return iter(
        data_fn(
            config.data,
            split,
            global_batch_size,
            start_step=start_step,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
    )


def _next_batch(
    iterator: Iterator[Mapping[str, np.ndarray]], split: str, step: int
) -> Mapping[str, np.ndarray]:
    try:
        return next(iterator)
    except StopIteration:
        raise RuntimeError(
            f"the {split!r} data ran out at step {step}; the data pipeline "
            "must repeat (num_epochs=None) for training"
        ) from None


def _run_eval(
    config: ml_collections.ConfigDict,
    task: Any,
    compiled: CompiledSteps,
    state: Any,
    mesh: jax.sharding.Mesh,
    data_fn: DataFn,
    rng: jax.Array,
) -> tuple[dict[str, float], Mapping[str, jax.Array] | None]:
    """Averages `eval_step` over `eval_steps` validation batches; returns it and the first batch."""
    totals: dict[str, float] = {}
    first = None
    if config.eval_steps > 0:
        iterator = _data_iterator(data_fn, config, "validation", config.eval_batch_size, mesh, 0)
        for index in range(config.eval_steps):
            try:
                batch = sharding_lib.shard_batch(next(iterator), mesh)
            except StopIteration:
                raise RuntimeError(
                    f"the 'validation' data has fewer than eval_steps={config.eval_steps} batches"
                ) from None
            first = batch if first is None else first
            metrics = sharding_lib.to_host(
                compiled.evaluate(state, batch, jax.random.fold_in(rng, index))
            )
            for name, value in metrics.items():
                totals[name] = totals.get(name, 0.0) + float(value)
        totals = {name: value / config.eval_steps for name, value in totals.items()}
    return totals, first


def _first_batch(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, data_fn: DataFn
) -> Mapping[str, jax.Array]:
    iterator = _data_iterator(data_fn, config, "validation", config.eval_batch_size, mesh, 0)
    return sharding_lib.shard_batch(_next_batch(iterator, "validation", 0), mesh)


def _run_evaluators(task: Any, state: Any) -> dict[str, float]:
    values = {}
    evaluators = getattr(task, "evaluators", None)
    for evaluator in evaluators() if callable(evaluators) else ():
        for name, value in evaluator.run(state):
            values[f"{evaluator.name}/{name}"] = float(value)
    return values


def _write_images(
    task: Any,
    state: Any,
    batch: Mapping[str, jax.Array] | None,
    rng: jax.Array,
    step: int,
    workdir: str,
    writer: Any,
) -> None:
    images_fn = getattr(task, "images", None)
    if batch is None or not callable(images_fn):
        return
    images = sharding_lib.to_host(dict(images_fn(state, batch, rng)))
    if not images:
        return
    if jax.process_index() == 0:
        from fsq_jax.train import writers as writers_lib

        writers_lib.write_pngs(os.path.join(workdir, "images"), step, images)
    writer.write_images(step, {name: image[None] for name, image in images.items()})


def _param_count(state: Any) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(state.params)))


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    task: Any = None,
    *,
    data_fn: DataFn | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, Any]:
    """Trains `task` (default: `load_task(config)`) for `config.total_steps`, resuming if possible.

    Args:
      config: loop fields (see `fsq_jax.train.default_config()`) plus the task's sections.
      workdir: output directory (checkpoints/, metrics.csv, TensorBoard events, images/,
        config.json, results.json).
      task: an object following `fsq_jax.train.Task`.
      data_fn: replaces `fsq_jax.data.build` (same signature), e.g. for synthetic data;
        default: the task's `data_fn` when it has one, else `fsq_jax.data.build`.
      mesh: device mesh with a `data` axis (default: every device, `sharding.create_mesh()`).

    Returns:
      `{"step", "train", "eval", "evaluators", "skipped_updates", "preempted"}`; also written
      to `workdir/results.json` when training reaches `total_steps`.

    Raises:
      ConfigError: a bad config field (before anything is compiled).
      NonFiniteError: NaN/Inf with `nan_policy="stop"`.
      CheckpointError: checkpoints exist but none is readable, or they hold another config's
        state.
      WorkdirLockedError: another training run holds `workdir`.
      CheckpointSaveError: a checkpoint could not be written (disk full, permission denied).

    SIGTERM/SIGINT end the run early: the current step finishes, a checkpoint is written and
    the result has `preempted=True` (rerun the same command to resume).
    """
    task = load_task(config) if task is None else task
    mesh = sharding_lib.create_mesh() if mesh is None else mesh
    validate_config(config, task, num_devices=mesh.devices.size)
    if data_fn is None:  # a task may bring its own (e.g. stage II's token cache)
        data_fn = getattr(task, "data_fn", None) or _default_data_fn()
    is_chief = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)

    root_rng = jax.random.PRNGKey(config.seed)
    init_rng, train_rng, eval_rng, image_rng = jax.random.split(root_rng, 4)
    checkpointer = Checkpointer(
        os.path.join(workdir, CHECKPOINT_DIR), config.keep_checkpoints, config.async_checkpoints,
        lock=WorkdirLock(workdir),  # one run per workdir; a second is refused in one line
    )
    # SIGTERM/SIGINT from here on: finish the current step, checkpoint, return normally.
    stop = _StopSignal().__enter__()
    try:
        init_batch = sharding_lib.shard_batch(
            _next_batch(
                _data_iterator(data_fn, config, "train", config.batch_size, mesh, 0), "train", 0
            ),
            mesh,
        )
        abstract, state_sharding = _abstract_state(task, init_rng, init_batch, mesh, config.fsdp)
        restored = checkpointer.restore_latest(target=abstract)
        if is_chief:  # only once the run is accepted: the workdir's checkpoints fit it
            _write_json(os.path.join(workdir, CONFIG_FILE),
                        json.loads(config.to_json_best_effort()))
        if restored is None:
            start_step = 0
            # Initialise as a plain dict and reuse the optimisers of `abstract`, so every later
            # state carries the very same (static) optimiser objects.
            tree = jax.jit(
                lambda rng, batch: state_to_tree(task.init_state(rng, batch)),
                out_shardings=state_to_tree(state_sharding),
            )(init_rng, init_batch)
            state = tree_to_state(tree, abstract)
            skipped = 0
        else:
            start_step, state = restored
            skipped = int(checkpointer.restored_extra.get("skipped_updates", 0))
            logging.info("resumed from the checkpoint at step %d", start_step)
        del init_batch
        from fsq_jax.train import writers as writers_lib  # imports TensorFlow: only when training

        writer = writers_lib.create_writer(workdir, start_step if restored else None, is_chief)
        try:
            run = _RunContext(config, workdir, task, data_fn, mesh, state_sharding, checkpointer,
                              writer, (train_rng, eval_rng, image_rng), stop)
            return _train(run, state, start_step, skipped)
        finally:
            writer.flush()
            writer.close()
    finally:
        checkpointer.close()
        stop.__exit__()


@dataclasses.dataclass(frozen=True)
class _RunContext:
    """What stays fixed while one run trains: its config, outputs, task, data, devices, rngs."""

    config: ml_collections.ConfigDict
    workdir: str
    task: Any
    data_fn: DataFn
    mesh: jax.sharding.Mesh
    state_sharding: Any
    checkpointer: Checkpointer
    writer: Any
    rngs: tuple[jax.Array, jax.Array, jax.Array]  # train, eval, images
    stop: _StopSignal


def _train(run: _RunContext, state: Any, start_step: int, skipped: int) -> dict[str, Any]:
    """The step loop from `start_step` (with `skipped` updates so far) to `total_steps`."""
    config, workdir, task, data_fn, mesh = (run.config, run.workdir, run.task, run.data_fn,
                                            run.mesh)
    checkpointer, writer, stop = run.checkpointer, run.writer, run.stop
    train_rng, eval_rng, image_rng = run.rngs
    state_sharding = run.state_sharding
    total = config.total_steps
    logging.info(
        "training %s: %d parameters on %d devices (%d processes), steps %d -> %d",
        config.task,
        _param_count(state),
        jax.device_count(),
        jax.process_count(),
        start_step,
        total,
    )
    compiled = CompiledSteps(task, state_sharding, mesh)
    iterator = _data_iterator(data_fn, config, "train", config.batch_size, mesh, start_step)
    progress = Progress(start_step, total)
    window: list[dict[str, float]] = []
    pending: list[tuple[int, Any, Any]] = []
    results: dict[str, Any] = {
        "step": start_step,
        "train": {},
        "eval": {},
        "evaluators": {},
        "skipped_updates": skipped,
        "preempted": False,
    }

    def drain() -> None:
        """Reads back finished steps' metrics and NaN flags (one step behind the device)."""
        nonlocal skipped
        while pending:
            done_step, metrics, flags = pending.pop(0)
            flags = sharding_lib.to_host(flags)
            if flags.any():
                names = [n for n, bad in zip(compiled.flag_names, flags) if bad]
                if config.nan_policy == "stop":
                    raise NonFiniteError(done_step, names)
                skipped += 1
                logging.warning(
                    "step %d: non-finite %s, update skipped (%d so far)",
                    done_step,
                    ", ".join(names),
                    skipped,
                )
                continue
            window.append({k: float(v) for k, v in sharding_lib.to_host(metrics).items()})

    step = start_step
    started = time.monotonic()
    if stop.requested():
        logging.warning("stop requested before the first step; nothing new to checkpoint")
        results["preempted"] = True
        return results
    while step < total:
        batch = sharding_lib.shard_batch(_next_batch(iterator, "train", step), mesh)
        state, metrics, flags = compiled.train(state, batch, train_rng)
        step += 1
        drain()
        pending.append((step, metrics, flags))
        if step == start_step + 1:
            drain()
            first = time.monotonic() - started
            progress.exclude(first)
            logging.info("first step (including compilation) took %s", format_duration(first))
        preempted = stop.requested()
        if _is_due(step, config.log_every, total) or preempted:
            drain()
            train_metrics = {
                f"train/{k}": float(np.mean([w[k] for w in window]))
                for k in (window[0] if window else {})
            }
            window.clear()
            line, rate = progress.report(step, {k[6:]: v for k, v in train_metrics.items()})
            if jax.process_index() == 0:
                print(line, flush=True)
            scalars = {**train_metrics, "steps_per_sec": rate, "skipped_updates": skipped}
            writer.write_scalars(step, scalars)
            results["train"] = train_metrics
        eval_due = _is_due(step, config.eval_every, total) and not preempted
        images_due = _is_due(step, config.images_every, total) and not preempted
        if eval_due or images_due:
            drain()
            eval_started = time.monotonic()
            if eval_due:
                eval_metrics, first_batch = _run_eval(
                    config, task, compiled, state, mesh, data_fn, jax.random.fold_in(eval_rng, step)
                )
                evaluator_values = _run_evaluators(task, state)
                eval_scalars = {f"eval/{k}": v for k, v in eval_metrics.items()}
                writer.write_scalars(step, {**eval_scalars, **evaluator_values})
                results["eval"], results["evaluators"] = eval_scalars, evaluator_values
                if eval_scalars or evaluator_values:
                    logging.info(
                        "step %d eval: %s",
                        step,
                        " ".join(
                            f"{k}={v:.4g}" for k, v in {**eval_scalars, **evaluator_values}.items()
                        ),
                    )
            if images_due:
                if not eval_due or first_batch is None:
                    first_batch = _first_batch(config, mesh, data_fn)
                _write_images(
                    task,
                    state,
                    first_batch,
                    jax.random.fold_in(image_rng, step),
                    step,
                    workdir,
                    writer,
                )
            writer.flush()
            progress.exclude(time.monotonic() - eval_started)
        if _is_due(step, config.checkpoint_every, total) or preempted:
            drain()
            save_started = time.monotonic()
            checkpointer.save(step, state, extra={"skipped_updates": skipped})
            progress.exclude(time.monotonic() - save_started)
        if preempted:
            checkpointer.wait()
            results["preempted"] = True
            logging.warning("stopped at step %d on request; checkpoint saved", step)
            break
    drain()
    checkpointer.wait()
    results["step"] = step
    results["skipped_updates"] = skipped
    if step >= total and jax.process_index() == 0:
        _write_json(os.path.join(workdir, RESULTS_FILE), results)
    return results


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run saved as `workdir/config.json` when it started."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: {workdir!r} is not a training workdir "
            "(the loop writes config.json when it starts)"
        )
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


_read_config = read_config  # earlier name, kept for existing callers


def restore_latest(workdir: str, target: Any = None) -> tuple[ml_collections.ConfigDict, Any]:
    """Loads a finished or running workdir: its config and its newest good checkpoint.

    Args:
      workdir: a directory written by `train_and_evaluate`.
      target: None restores host numpy arrays as a dict with keys `step`, `params`,
        `opt_state`, `ema_params`, `model_state`. For a typed `TrainState` (optimisers
        included), pass the abstract state of the task that wrote the checkpoint, e.g.
        `jax.eval_shape(task.init_state, rng, batch)`; leaves may carry shardings.

    Raises:
      FileNotFoundError: no config.json or no checkpoint in `workdir`.
    """
    config = read_config(workdir)
    directory = os.path.join(workdir, CHECKPOINT_DIR)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoints in {workdir!r}")
    checkpointer = CheckpointReader(directory)  # never moves or deletes anything
    try:
        restored = checkpointer.restore_latest(target=target)
    finally:
        checkpointer.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoints in {directory!r}")
    return config, restored[1]


def evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    task: Any = None,
    *,
    data_fn: DataFn | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, Any]:
    """Restores the latest checkpoint of `workdir`, evaluates it, writes `evaluation.json`.

    Runs `task.eval_step` over `config.eval_steps` validation batches and the task's
    evaluators; returns `{"step", "eval", "evaluators"}`.
    """
    task = load_task(config) if task is None else task
    mesh = sharding_lib.create_mesh() if mesh is None else mesh
    validate_config(config, task, num_devices=mesh.devices.size)
    if data_fn is None:  # a task may bring its own (e.g. stage II's token cache)
        data_fn = getattr(task, "data_fn", None) or _default_data_fn()
    init_rng, _, eval_rng, _ = jax.random.split(jax.random.PRNGKey(config.seed), 4)
    batch = sharding_lib.shard_batch(
        next(_data_iterator(data_fn, config, "validation", config.eval_batch_size, mesh, 0)), mesh
    )
    abstract, state_sharding = _abstract_state(task, init_rng, batch, mesh, config.fsdp)
    checkpointer = CheckpointReader(os.path.join(workdir, CHECKPOINT_DIR))  # read-only
    try:
        restored = checkpointer.restore_latest(target=abstract)
    finally:
        checkpointer.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint to evaluate in {workdir!r}")
    step, state = restored
    compiled = CompiledSteps(task, state_sharding, mesh)
    eval_metrics, _ = _run_eval(
        config, task, compiled, state, mesh, data_fn, jax.random.fold_in(eval_rng, step)
    )
    results = {
        "step": step,
        "eval": {f"eval/{k}": v for k, v in eval_metrics.items()},
        "evaluators": _run_evaluators(task, state),
    }
    if jax.process_index() == 0:
        _write_json(os.path.join(workdir, EVALUATION_FILE), results)
    return results
