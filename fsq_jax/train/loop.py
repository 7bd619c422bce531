"""The shared training loop: jit on a device mesh, checkpoints, metrics, evaluation, guards.

Tasks supply pure `init_state` / `train_step` / `eval_step`; this module owns everything around
them: one validation pass before anything is built, frozen stages, the mesh, evaluation (with an
`EvalContext` for every evaluator), progress, checkpoints, preemption and the NaN guard. Runs
resume exactly: the rng of step s is `fold_in(base, s)` and the data stream restarts at the
restored step, so an interrupted and an uninterrupted run end with identical params on CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
import optax
from absl import logging

from fsq_jax import run_dir
from fsq_jax.data import folder
from fsq_jax.train import actions, resume
from fsq_jax.train import evaluation as evaluation_lib
from fsq_jax.train import sharding as sharding_lib
from fsq_jax.train.checkpoint import Checkpointer, restore_latest, state_to_tree, tree_to_state
from fsq_jax.train.frozen import load_frozen
from fsq_jax.train.state import TrainState
from fsq_jax.train.stopping import StopRequestedError
from fsq_jax.train.validate import resolve_task, validate
from fsq_jax.train.workdir import WorkdirLock

DataFn = evaluation_lib.DataFn


class NonFiniteError(FloatingPointError):
    """A step produced NaN/Inf in a metric or in the params (with `nan_policy="stop"`)."""

    def __init__(self, step: int, names: list[str]):
        self.step = step
        self.names = list(names)
        super().__init__(
            f"non-finite value (NaN/Inf) at step {step} in {', '.join(names)}; stopped without "
            "applying the update, the last good checkpoint is kept (set nan_policy='skip' to "
            "skip such updates instead)")


class DivergedError(NonFiniteError):
    """With `nan_policy="skip"`, more than `max_consecutive_skips` updates in a row were
    non-finite: the run is diverging, and skipping more would only burn compute."""

    def __init__(self, step: int, names: list[str], consecutive: int, limit: int):
        FloatingPointError.__init__(
            self, f"{consecutive} updates in a row skipped as non-finite (steps "
            f"{step - consecutive + 1}-{step}, the last in {', '.join(names)}), more than "
            f"max_consecutive_skips = {limit}: the run diverged; the last good checkpoint is "
            "kept (lower the learning rate, or raise max_consecutive_skips)")
        self.step, self.names = step, list(names)


def build_task(config: ml_collections.ConfigDict, task_cls: type | None = None) -> Any:
    """The task of a validated config, with its frozen stage when it declares one."""
    task_cls = resolve_task(config) if task_cls is None else task_cls
    field = getattr(task_cls, "frozen_stage_field", None)
    if not field:
        return task_cls(config)
    return task_cls(config, frozen=load_frozen(config[field], f"config.{field}"))


def _data_fn(task: Any, data_fn: DataFn | None) -> DataFn:
    """The caller's data function, else the task's own (e.g. stage II's token cache), else
    `fsq_jax.data.build`."""
    if data_fn is not None:
        return data_fn
    if getattr(task, "data_fn", None) is not None:
        return task.data_fn
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


def _scalar_metrics(metrics: Mapping[str, Any], where: str) -> dict[str, jax.Array]:
    out = {}
    for name, value in metrics.items():
        value = jnp.asarray(value)
        if value.ndim != 0:
            raise ValueError(f"{where} returned metric {name!r} with shape {value.shape}; "
                             "metrics must be scalars")
        out[name] = value.astype(jnp.float32)
    return out


def norm_metrics(old: TrainState, new: TrainState) -> dict[str, jax.Array]:
    """The loop's norms of every parameter group: `grad_norm/<group>` (of the gradients
    applied), `update_norm/<group>` (of the change of the params), `param_norm/<group>`."""
    out = {}
    for group in new.params:
        update = jax.tree.map(lambda a, b: a - b, new.params[group], old.params[group])
        out[f"grad_norm/{group}"] = new.grad_norms[group]
        out[f"update_norm/{group}"] = optax.global_norm(update)
        out[f"param_norm/{group}"] = optax.global_norm(new.params[group])
    return out


def _finite_flags(metrics: Mapping[str, jax.Array], params: Mapping[str, Any]
                  ) -> tuple[list[str], jax.Array]:
    """Names and a bool vector: True where that metric (or param group) is non-finite."""
    names, flags = [], []
    for name, value in sorted(metrics.items()):
        names.append(f"metric '{name}'")
        flags.append(~jnp.isfinite(value))
    for group, tree in sorted(params.items()):
        leaves = [leaf for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
        finite = (jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))
                  if leaves else jnp.asarray(True))
        names.append(f"params['{group}'] (after the update)")
        flags.append(~finite)
    return names, jnp.stack(flags) if flags else jnp.zeros((0,), bool)


class CompiledSteps:
    """The loop's jitted steps of a task on a mesh (also used by benchmarks).

    `train(state, batch, base_rng) -> (state, metrics, nonfinite_flags)`: runs
    `task.train_step` with rng `fold_in(base_rng, state.step)`, adds the norms of
    `norm_metrics`, never applies an update with NaN/Inf in a metric or the new params (the step
    still advances), donates `state`. `evaluate(state, batch, rng) -> metrics`. `flag_names`
    names the flags after tracing.
    """

    def __init__(self, task: Any, state_sharding: Any, mesh: jax.sharding.Mesh):
        self.flag_names: list[str] = []
        replicated = sharding_lib.replicated(mesh)
        data = sharding_lib.batch_sharding(mesh)

        def train(state, batch, base_rng):
            rng = jax.random.fold_in(base_rng, state.step)
            new_state, metrics = task.train_step(state, batch, rng)
            metrics = _scalar_metrics({**metrics, **norm_metrics(state, new_state)},
                                      "train_step")
            names, flags = _finite_flags(metrics, new_state.params)
            self.flag_names = names
            bad = jnp.any(flags)
            kept = jax.tree.map(lambda new, old: jnp.where(bad, old, new), new_state, state)
            return kept.replace(step=state.step + 1), metrics, flags

        def evaluate(state, batch, rng):
            return _scalar_metrics(task.eval_step(state, batch, rng), "eval_step")

        self.train = jax.jit(train, in_shardings=(state_sharding, data, replicated),
                             out_shardings=(state_sharding, replicated, replicated),
                             donate_argnums=(0,))
        self.evaluate = jax.jit(evaluate, in_shardings=(state_sharding, data, replicated),
                                out_shardings=replicated)


def abstract_state(task: Any, rng: jax.Array, batch: Mapping[str, jax.Array],
                   mesh: jax.sharding.Mesh, fsdp: bool) -> tuple[Any, Any]:
    """The task's state as ShapeDtypeStructs carrying their shardings, and the shardings."""
    abstract = jax.eval_shape(task.init_state, rng, batch)
    if not isinstance(abstract, TrainState):
        raise TypeError("task.init_state must return fsq_jax.train.TrainState, got "
                        f"{type(abstract).__name__}")
    shardings = sharding_lib.state_shardings(abstract, mesh, fsdp)
    with_shardings = jax.tree.map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), abstract,
        shardings)
    return with_shardings, shardings


def _train_stream(data_fn: DataFn, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                  start_step: int) -> Iterator[dict[str, jax.Array]]:
    """The train batches from `start_step` on, placed on the mesh."""
    sharding_lib.local_batch_size(config.batch_size, mesh)  # checks divisibility
    stream = data_fn(config.data, "train", config.batch_size, start_step=start_step,
                     process_index=jax.process_index(), process_count=jax.process_count())
    for batch in stream:
        yield sharding_lib.shard_batch(batch, mesh)
    raise RuntimeError("the 'train' data ran out; the data pipeline must repeat (num_epochs="
                       "None) for training")


@dataclasses.dataclass(frozen=True)
class _RunContext:
    """What stays fixed while one run trains: its config, outputs, task, data, devices, rngs."""

    config: ml_collections.ConfigDict
    workdir: str
    task: Any
    data_fn: DataFn
    mesh: jax.sharding.Mesh
    compiled: CompiledSteps
    checkpointer: Checkpointer
    writer: Any
    rngs: tuple[jax.Array, jax.Array, jax.Array]  # train, eval, images
    stop: _StopSignal

    def eval_context(self, step: int) -> evaluation_lib.EvalContext:
        data_fn = self.data_fn if self.stop is None else _stoppable(self.data_fn, self.stop)
        return evaluation_lib.EvalContext(self.mesh, jax.random.fold_in(self.rngs[1], step),
                                          step, data_fn, self.config.data)


def _stoppable(data_fn: DataFn, stop: _StopSignal) -> DataFn:
    """`data_fn` whose streams raise StopRequestedError between batches once a stop is requested:
    an evaluation (FID over 50k images) ends within a batch of a SIGTERM, not when done."""

    def batches(*args: Any, **kwargs: Any) -> Iterator[Mapping[str, Any]]:
        for batch in data_fn(*args, **kwargs):
            if stop.requested():
                raise StopRequestedError("stop requested during evaluation")
            yield batch

    return batches


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, task: Any = None, *,
                       data_fn: DataFn | None = None, mesh: jax.sharding.Mesh | None = None,
                       allow_config_change: bool = False) -> dict[str, Any]:
    """Validates `config`, builds its task and trains it for `config.total_steps`, resuming
    from the newest good checkpoint in `workdir` when there is one.

    Args:
      config: a complete experiment config (loop fields plus the task's sections).
      workdir: output directory (checkpoints/, metrics.csv, TensorBoard events, images/,
        config.json, results.json).
      task: an already built task (default: built from `config.task` after validation).
      data_fn: replaces the task's data function (`fsq_jax.data.build`'s signature).
      mesh: device mesh with a `data` axis (default: every device).
      allow_config_change: resume the run in `workdir` even though its config.json differs
        from `config` in fields outside `resume.RESUMABLE_FIELDS`.

    Returns:
      `{"step", "train", "eval", "evaluators", "skipped_updates", "skipped_images",
      "preempted", "seconds"}` (`seconds`: wall time of this process's share of the run, by
      part: training, compilation, eval, images, checkpoint, total); also written to
      `workdir/results.json` when training reaches `total_steps`. A finished run (results.json
      at `total_steps` or later, same config up to the resumable fields) is not touched: its
      stored results are returned.

    Raises:
      ConfigError: a bad config field (before anything is built or compiled), or a config
        that changes the experiment of the run in `workdir` (`resume.ConfigChangedError`).
      NonFiniteError: NaN/Inf with `nan_policy="stop"`; `DivergedError` with "skip", after
        more than `max_consecutive_skips` skipped updates in a row.
      CheckpointError: checkpoints exist but none is readable, or they hold another config's
        state.
      WorkdirLockedError: another run holds `workdir`.
      CheckpointSaveError: a save failed (disk full, permission denied), in one line.

    SIGTERM/SIGINT end the run early: the current step (or evaluation batch, or token-cache
    batch) finishes, a checkpoint is written and the result has `preempted=True` (rerun the
    same command to resume). A start that fails before the run is accepted leaves no
    `checkpoints/`, no `config.json` and no workdir it created.
    """
    mesh = sharding_lib.create_mesh() if mesh is None else mesh
    validate(config, None if task is None else type(task), num_devices=mesh.devices.size)
    changes = resume.check_config(config, workdir, allow_config_change)
    finished = resume.finished_results(config, workdir)
    if finished is not None:  # a rerun of a finished run: keep it as it is
        if jax.process_index() == 0:
            print(resume.finished_line(config, workdir, finished), flush=True)
        return finished
    if changes:
        logging.warning("resuming %s with config changes: %s", workdir,
                        ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()))
    task = build_task(config) if task is None else task
    data_fn = _data_fn(task, data_fn)
    with resume.FirstStart(workdir) as start:
        resume.make_workdir(workdir)
        return _start(config, workdir, task, data_fn, mesh, start)


def _start(config: ml_collections.ConfigDict, workdir: str, task: Any, data_fn: DataFn,
           mesh: jax.sharding.Mesh, start: Any) -> dict[str, Any]:
    """Takes the workdir (lock, checkpoints), builds or restores the state, accepts the run
    (config.json) and trains; `start` is the `resume.FirstStart` that undoes a failed start."""
    init_rng, *rngs = jax.random.split(jax.random.PRNGKey(config.seed), 4)
    # One run per workdir: a second is refused in one line naming the holder of the lock.
    checkpointer = Checkpointer(os.path.join(workdir, run_dir.CHECKPOINT_DIR),
                                config.keep_checkpoints, config.async_checkpoints,
                                lock=WorkdirLock(workdir))
    stop = _StopSignal().__enter__()  # from here on a signal ends the run with a checkpoint
    try:
        try:
            state, start_step, extra, shardings = _initial_state(config, task, data_fn, mesh,
                                                                 checkpointer, init_rng)
        except StopRequestedError as stopped:  # e.g. while building stage II's token cache
            logging.warning("%s", stopped)
            return {"step": 0, "train": {}, "eval": {}, "evaluators": {},
                    "skipped_updates": 0, "preempted": True}
        start.accept()
        if jax.process_index() == 0:  # only once the run is accepted: its checkpoints fit it
            run_dir.write_json(os.path.join(workdir, run_dir.CONFIG_FILE),
                               run_dir.config_json(config))
        from fsq_jax.train import writers as writers_lib  # imports TensorFlow: when training

        writer = writers_lib.create_writer(workdir, start_step or None,
                                           jax.process_index() == 0)
        try:
            run = _RunContext(config, workdir, task, data_fn, mesh,
                              CompiledSteps(task, shardings, mesh), checkpointer, writer,
                              tuple(rngs), stop)
            return _train(run, state, start_step, extra)
        finally:
            writer.flush()
            writer.close()
    finally:
        checkpointer.close()
        stop.__exit__()


def _initial_state(config: ml_collections.ConfigDict, task: Any, data_fn: DataFn,
                   mesh: jax.sharding.Mesh, checkpointer: Checkpointer, init_rng: jax.Array
                   ) -> tuple[Any, int, dict[str, int], Any]:
    """(state, start step, the loop's counters so far, state shardings): the newest good
    checkpoint when there is one, else a freshly initialised state."""
    init_batch = next(_train_stream(data_fn, config, mesh, 0))
    abstract, shardings = abstract_state(task, init_rng, init_batch, mesh, config.fsdp)
    restored = checkpointer.restore_latest(target=abstract)
    if restored is not None:
        start_step, state = restored
        logging.info("resumed from the checkpoint at step %d", start_step)
        extra = {key: int(checkpointer.restored_extra.get(key, 0)) for key in _COUNTERS}
        return state, start_step, extra, shardings
    # Initialise as a plain dict and reuse the optimisers of `abstract`, so every later state
    # carries the very same (static) optimiser objects.
    tree = jax.jit(lambda rng, batch: state_to_tree(task.init_state(rng, batch)),
                   out_shardings=state_to_tree(shardings))(init_rng, init_batch)
    return tree_to_state(tree, abstract), 0, dict.fromkeys(_COUNTERS, 0), shardings


# The loop's counters, saved with each checkpoint (its integrity record) and restored with it.
_COUNTERS = ("skipped_updates", "consecutive_skips")


class _MetricWindow:
    """Training metrics read back one step behind the device, with the NaN policy applied."""

    def __init__(self, flag_names: Callable[[], list[str]], nan_policy: str,
                 counters: Mapping[str, int], max_consecutive_skips: int):
        self._flag_names, self._policy = flag_names, nan_policy
        self.skipped = counters["skipped_updates"]
        self.consecutive = counters["consecutive_skips"]  # skipped updates in a row
        self._max_consecutive = max_consecutive_skips
        self._pending: list[tuple[int, Any, Any]] = []
        self._window: list[dict[str, float]] = []

    def add(self, step: int, metrics: Any, flags: Any) -> None:
        self.drain()
        self._pending.append((step, metrics, flags))

    def drain(self) -> None:
        """Reads back the finished steps; raises NonFiniteError or counts a skipped update
        (DivergedError after more than `max_consecutive_skips` in a row)."""
        while self._pending:
            step, metrics, flags = self._pending.pop(0)
            flags = sharding_lib.to_host(flags)
            if flags.any():
                names = [n for n, bad in zip(self._flag_names(), flags) if bad]
                if self._policy == "stop":
                    raise NonFiniteError(step, names)
                self.skipped += 1
                self.consecutive += 1
                logging.warning("step %d: non-finite %s, update skipped (%d so far)", step,
                                ", ".join(names), self.skipped)
                if self.consecutive > self._max_consecutive:
                    raise DivergedError(step, names, self.consecutive, self._max_consecutive)
                continue
            self.consecutive = 0
            self._window.append({k: float(v) for k, v in sharding_lib.to_host(metrics).items()})

    def means(self) -> dict[str, float]:
        """Mean of every metric since the last call, as `train/<name>`; empties the window."""
        self.drain()
        keys = self._window[0] if self._window else {}
        out = {f"train/{k}": float(np.mean([w[k] for w in self._window])) for k in keys}
        self._window.clear()
        return out

    def counters(self) -> dict[str, int]:
        """What a checkpoint stores so a resumed run counts on (see `_COUNTERS`)."""
        return {"skipped_updates": self.skipped, "consecutive_skips": self.consecutive}


def _train(run: _RunContext, state: Any, start_step: int, counters: Mapping[str, int]
           ) -> dict[str, Any]:
    """The step loop from `start_step` to `total_steps`, its periodic work as clu actions."""
    config, total = run.config, run.config.total_steps
    logging.info("training %s: %d parameters on %d devices (%d processes), steps %d -> %d",
                 config.task, sum(x.size for x in jax.tree.leaves(state.params)),
                 jax.device_count(), jax.process_count(), start_step, total)
    window = _MetricWindow(lambda: run.compiled.flag_names, config.nan_policy, counters,
                           config.max_consecutive_skips)
    results: dict[str, Any] = {"step": start_step, "train": {}, "eval": {}, "evaluators": {},
                               "skipped_updates": window.skipped, "preempted": False}
    holder = {"state": state}
    progress, periodic = _actions(run, holder, window, results)
    progress(start_step)  # clu's progress report starts its clock on its first call
    stream = _train_stream(run.data_fn, config, run.mesh, start_step)
    if run.stop.requested():
        logging.warning("stop requested before the first step; nothing new to checkpoint")
        return {**results, "preempted": True}
    step = start_step
    while step < total:
        first = step == start_step
        with progress.timed("compilation", wait_jax_async_dispatch=False) if first else \
                contextlib.nullcontext():
            started = time.monotonic()
            holder["state"], metrics, flags = run.compiled.train(holder["state"], next(stream),
                                                                 run.rngs[0])
            step += 1
            window.add(step, metrics, flags)
            if first:
                window.drain()
                logging.info("first step (including compilation) took %s",
                             actions.format_duration(time.monotonic() - started))
        stopped = run.stop.requested()
        try:
            for action in (progress,) if stopped else (progress, *periodic):
                action(step)
        except StopRequestedError:  # a signal during evaluation or pictures (see `_stoppable`)
            stopped = True
        if stopped:
            _save(run, holder["state"], step, window, progress, final=True)
            logging.warning("stopped at step %d on request; checkpoint saved", step)
            return {**results, "step": step, "skipped_updates": window.skipped,
                    "preempted": True}
    window.drain()
    run.checkpointer.wait()
    if start_step >= total:  # restored at the end (stopped in, or killed after, the last
        try:                 # evaluation): evaluate, so results.json is never empty
            results.update(evaluate_state(run, holder["state"], step))
        except StopRequestedError:
            return {**results, "preempted": True}
    results.update(step=step, skipped_updates=window.skipped,
                   skipped_images=folder.skip_report(config.data.source),
                   seconds=progress.seconds())
    if jax.process_index() == 0:
        run_dir.write_json(os.path.join(run.workdir, run_dir.RESULTS_FILE), results)
    return results


def _actions(run: _RunContext, holder: dict[str, Any], window: _MetricWindow,
             results: dict[str, Any]) -> tuple[actions.ReportProgress, list[Any]]:
    """The progress report and the periodic evaluation, pictures and checkpoints of a run."""
    config, total = run.config, run.config.total_steps

    def log_metrics(step: int, rate: float) -> dict[str, float]:
        train_metrics = window.means()
        run.writer.write_scalars(step, {**train_metrics, "steps_per_sec": rate,
                                        "skipped_updates": window.skipped})
        results["train"] = train_metrics
        return {k[len("train/"):]: v for k, v in train_metrics.items()}

    progress = actions.ReportProgress(
        num_train_steps=total, every_steps=config.log_every, metrics_fn=log_metrics,
        print_fn=print if jax.process_index() == 0 else lambda line: None)

    def timed(name: str, fn: Callable[[int], None]) -> Callable[..., None]:
        def callback(step: int, t: float) -> None:
            window.drain()
            with progress.timed(name, wait_jax_async_dispatch=False):
                fn(step)
        return callback

    def evaluate(step: int) -> None:
        values = evaluate_state(run, holder["state"], step)
        run.writer.write_scalars(step, {**values["eval"], **values["evaluators"]})
        run.writer.flush()
        results.update(values)

    def pictures(step: int) -> None:
        _write_images(run, holder["state"], step)
        run.writer.flush()

    def save(step: int) -> None:
        _save(run, holder["state"], step, window, progress, final=False)

    from clu import periodic_actions  # imports TensorFlow: only once a run trains

    periodic = [periodic_actions.PeriodicCallback(callback_fn=timed(name, fn),
                                                  **actions.every(period, total))
                for name, fn, period in (("eval", evaluate, config.eval_every),
                                         ("images", pictures, config.images_every),
                                         ("checkpoint", save, config.checkpoint_every))]
    return progress, periodic


def _save(run: _RunContext, state: Any, step: int, window: _MetricWindow,
          progress: actions.ReportProgress, final: bool) -> None:
    window.drain()
    with progress.timed("checkpoint", wait_jax_async_dispatch=False):
        run.checkpointer.save(step, state, extra=window.counters())
        if final:
            run.checkpointer.wait()


def evaluate_state(run: _RunContext, state: Any, step: int) -> dict[str, dict[str, Any]]:
    """`{"eval": mean eval-step metrics, "evaluators": every evaluator's metrics}` of `state`."""
    context = run.eval_context(step)
    evaluators = run.task.evaluators()
    eval_metrics, _ = evaluation_lib.average_eval_steps(
        run.compiled.evaluate, state, context, run.config.eval_batch_size, run.config.eval_steps)
    values = {"eval": {f"eval/{k}": v for k, v in eval_metrics.items()},
              "evaluators": evaluation_lib.run_evaluators(evaluators, state, context)}
    if skipped := evaluation_lib.skipped_metrics(evaluators):
        values["skipped"] = skipped  # results.json says which metrics were not computed, and why
    shown = {**values["eval"], **values["evaluators"]}
    if shown:
        logging.info("step %d eval: %s", step, " ".join(f"{k}={v:.4g}" for k, v in shown.items()))
    return values


def _write_images(run: _RunContext, state: Any, step: int) -> None:
    """The task's pictures of the first validation batch: PNGs in workdir/images and events."""
    images_fn = getattr(run.task, "images", None)
    if not callable(images_fn):
        return
    context = run.eval_context(step)
    host_batch = next(context.batches(run.config.eval_batch_size, run.config.eval_batch_size))
    batch = sharding_lib.shard_batch(host_batch, run.mesh)
    images = sharding_lib.to_host(dict(images_fn(state, batch, jax.random.fold_in(run.rngs[2],
                                                                                 step))))
    if not images:
        return
    if jax.process_index() == 0:
        from fsq_jax.train import writers as writers_lib

        writers_lib.write_pngs(os.path.join(run.workdir, "images"), step, images)
    run.writer.write_images(step, {name: image[None] for name, image in images.items()})


def evaluate(config: ml_collections.ConfigDict, workdir: str, task: Any = None, *,
             data_fn: DataFn | None = None, mesh: jax.sharding.Mesh | None = None
             ) -> dict[str, Any]:
    """Evaluates the newest good checkpoint of `workdir` without changing the workdir.

    Runs `task.eval_step` over `config.eval_steps` validation batches and the task's
    evaluators; returns `{"step", "eval", "evaluators"}`.
    """
    mesh = sharding_lib.create_mesh() if mesh is None else mesh
    validate(config, None if task is None else type(task), num_devices=mesh.devices.size)
    task = build_task(config) if task is None else task
    data_fn = _data_fn(task, data_fn)
    init_rng, _, eval_rng, image_rng = jax.random.split(jax.random.PRNGKey(config.seed), 4)
    batch = next(_train_stream(data_fn, config, mesh, 0))
    abstract, shardings = abstract_state(task, init_rng, batch, mesh, config.fsdp)
    _, state = restore_latest(workdir, target=abstract)
    step = int(state.step)
    run = _RunContext(config, workdir, task, data_fn, mesh, CompiledSteps(task, shardings, mesh),
                      None, None, (init_rng, eval_rng, image_rng), None)
    return {"step": step, **evaluate_state(run, state, step)}
