"""Checkpoints of the training state with orbax: keep-n, async, verified, and corruption-tolerant.

Every step is committed with its integrity record (sizes and CRC32s of its files, written into
orbax's temporary directory before the rename that commits it), so even the newest step of a
crashed run is verified on restore. Restore takes the newest step that verifies and reads; a
corrupt step is moved aside by the training run (`Checkpointer`) and left alone by read-only
tools (`CheckpointReader`); a step that cannot be read (permissions, I/O) is skipped in place.
When a workdir has checkpoint history but nothing restorable, restore refuses in one line
rather than letting a run start again from step 0.
"""

from __future__ import annotations

import logging as std_logging
import os
import shutil
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint.path import atomicity

from fsq_jax import run_dir
from fsq_jax.train import integrity
from fsq_jax.train.workdir import WorkdirError, WorkdirLock, acquire_for_run, storage_problem

MANIFEST = integrity.RECORD
CORRUPT_DIR = "checkpoints_corrupt"
STATE_FIELDS = ("step", "params", "opt_state", "ema_params", "model_state")
# Replicated arrays below this size are written by one replica instead of being sliced across
# replicas: slicing compiles one small program per shape, which dominates small checkpoints.
REPLICA_PARALLEL_MIN_BYTES = 4 << 20
TMP_SUFFIX = atomicity.TMP_DIR_SUFFIX
_ADVICE = {
    "no space left on device": "free space and rerun",
    "disk quota exceeded": "free space (or raise the quota) and rerun",
    "input/output error": "check the storage and rerun",
}


def _type_handler_registry() -> Any:
    try:
        from orbax.checkpoint._src.metadata import array_metadata_store

        store = array_metadata_store.Store()
    except ImportError:  # other orbax layouts: skip the optional per-array metadata files
        store = None
    handlers = ocp.type_handlers
    return handlers.create_type_handler_registry(
        (int, handlers.ScalarHandler()),
        (float, handlers.ScalarHandler()),
        (bytes, handlers.ScalarHandler()),
        (np.number, handlers.ScalarHandler()),
        (np.ndarray, handlers.NumpyHandler()),
        (
            jax.Array,
            handlers.ArrayHandler(
                min_slice_bytes_for_replica_parallel=REPLICA_PARALLEL_MIN_BYTES,
                array_metadata_store=store,
            ),
        ),
        (str, handlers.StringHandler()),
    )


class CheckpointError(RuntimeError):
    """No usable checkpoint could be restored; the message is one line saying what to do."""


class CheckpointSaveError(WorkdirError):
    """A checkpoint could not be written (disk full, permission denied, ...); the steps
    committed before it are intact."""


def state_to_tree(state: Any) -> dict[str, Any]:
    """The saved part of a `TrainState` (everything but the static optimisers) as a dict."""
    if isinstance(state, dict):
        return {k: state[k] for k in STATE_FIELDS if k in state}
    return {field: getattr(state, field) for field in STATE_FIELDS}


def tree_to_state(tree: dict[str, Any], template: Any) -> Any:
    """Puts restored arrays back into a `TrainState`-like `template` (keeps its optimisers)."""
    if isinstance(template, dict):
        return dict(tree)
    # Gradient norms are not saved: zeros, placed like the template's (an uncommitted array
    # would make the first train step compile twice).
    norms = {k: jax.device_put(np.zeros(leaf.shape, leaf.dtype), getattr(leaf, "sharding", None))
             for k, leaf in template.grad_norms.items()}
    return template.replace(**{k: tree[k] for k in STATE_FIELDS}, grad_norms=norms)


def _committed_steps(directory: str) -> list[int]:
    """Step numbers of the committed checkpoints in `directory`, ascending (listed afresh)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise CheckpointError(
            f"cannot list the checkpoints in {directory}: {e.strerror} (errno {e.errno}); "
            "fix its access rights and rerun"
        ) from None
    return sorted(
        int(name)
        for name in names
        if name.isdigit() and os.path.isdir(os.path.join(directory, name))
    )


def _set_aside_steps(directory: str) -> list[int]:
    """Steps an earlier run moved to `checkpoints_corrupt/` (named `STEP-TIME`), newest first."""
    aside = os.path.join(os.path.dirname(directory), CORRUPT_DIR)
    try:
        names = os.listdir(aside)
    except OSError:
        return []
    steps = {int(name.split("-")[0]) for name in names if name.split("-")[0].isdigit()}
    return sorted(steps, reverse=True)


def _integrity_path_class(directory: str, extras: dict[int, dict[str, Any]]) -> type:
    """orbax's atomic-rename temporary path, writing our integrity record into a step's
    temporary directory just before the rename commits it (the rename is the commit, so no
    committed step lacks its record). `extras` maps step -> the loop bookkeeping to store."""

    class IntegrityTemporaryPath(atomicity.AtomicRenameTemporaryPath):
        async def finalize(self, *args: Any, **kwargs: Any) -> None:
            final = self.get_final()
            # orbax finalizes the item directory (`default`) first, then the step: only the step.
            if os.path.abspath(str(final.parent)) == directory and final.name.isdigit():
                step = int(final.name)
                integrity.write_record(str(self.get()), step, extras.pop(step, {}))
            await super().finalize(*args, **kwargs)

    return IntegrityTemporaryPath


class _DropStorageErrorLogs(std_logging.Filter):
    """Drops orbax's own tracebacks of a storage error (disk full, permission denied), and
    asyncio's 'Task exception was never retrieved' for its write tasks: the `Checkpointer`
    reports that error itself in one line naming the step and the path."""

    loggers = ("absl", "asyncio")  # orbax logs through absl

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.levelno < std_logging.ERROR:
            return True
        if record.name != "asyncio" and f"{os.sep}orbax{os.sep}" not in record.pathname:
            return True
        if record.exc_info and record.exc_info[1] is not None and storage_problem(
            record.exc_info[1]
        ):
            return False
        return storage_problem(RuntimeError(record.getMessage())) is None


class _DropReadOnlyNotice(std_logging.Filter):
    def filter(self, record: std_logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Given directory is read only")


def _is_late_write_callback(value: BaseException | None, tb: Any) -> bool:
    """Whether an exception is tensorstore completing a write future into orbax's event loop
    after that loop closed (it happens when a save failed: disk full, permission denied)."""
    if not isinstance(value, RuntimeError) or str(value) != "Event loop is closed":
        return False
    if threading.current_thread() is threading.main_thread():
        return False  # the program's own uncaught errors always keep their traceback
    return any(frame.f_code.co_name == "call_soon_threadsafe"
               for frame, _ in traceback.walk_tb(tb))


def _ignore_late_callbacks_of_failed_writes() -> None:
    """After a failed save, tensorstore's threads may still complete write futures into
    orbax's closed event loop; each prints 'RuntimeError: Event loop is closed' with a
    traceback (via sys.excepthook or sys.unraisablehook), burying the one line that says what
    failed. Drops exactly those; installed once per process, everything else passes through."""
    previous_except, previous_unraisable = sys.excepthook, sys.unraisablehook
    if getattr(previous_except, "fsq_ignores_closed_loops", False):
        return

    def excepthook(kind: Any, value: BaseException, tb: Any) -> None:
        if not _is_late_write_callback(value, tb):
            previous_except(kind, value, tb)

    def unraisablehook(unraisable: Any) -> None:
        if not _is_late_write_callback(unraisable.exc_value, unraisable.exc_traceback):
            previous_unraisable(unraisable)

    excepthook.fsq_ignores_closed_loops = True
    sys.excepthook, sys.unraisablehook = excepthook, unraisablehook


class CheckpointReader:
    """Restores the newest good checkpoint of `directory` and never changes anything there.

    For tools that read a workdir (evaluation, sampling, stage II loading stage I), possibly
    while its training run writes and deletes steps: a step that disappears mid-read is skipped,
    a bad one is reported and left in place.
    """

    read_only = True

    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        self.restored_extra: dict[str, Any] = {}
        self._manager: ocp.CheckpointManager | None = None

    def _options(self) -> ocp.CheckpointManagerOptions:
        # orbax's read-only mode refuses to save or delete: a second guard besides our code.
        return ocp.CheckpointManagerOptions(
            read_only=True, create=False, save_interval_steps=0, enable_async_checkpointing=False
        )

    def _new_manager(self) -> ocp.CheckpointManager:
        notice = _DropReadOnlyNotice()  # orbax warns on every read-only open: expected here
        logging.get_absl_logger().addFilter(notice)
        try:
            return ocp.CheckpointManager(
                self.directory,
                item_handlers=ocp.PyTreeCheckpointHandler(
                    type_handler_registry=_type_handler_registry()
                ),
                options=self._options(),
            )
        finally:
            logging.get_absl_logger().removeFilter(notice)

    @property
    def manager(self) -> ocp.CheckpointManager:
        if self._manager is None:
            self._manager = self._new_manager()
        return self._manager

    def _reset_manager(self) -> None:
        """Drops orbax's cached view of the directory after steps were moved."""
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    def all_steps(self) -> list[int]:
        """Committed checkpoint steps, ascending."""
        return _committed_steps(self.directory)

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _restore_step(self, step: int, target: Any | None) -> Any:
        manager = self.manager
        if target is None:
            metadata = manager.item_metadata(step)
            tree = getattr(metadata, "tree", metadata)
            restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
            return manager.restore(step, args=ocp.args.PyTreeRestore(restore_args=restore_args))
        abstract = jax.tree.map(_abstract_leaf, state_to_tree(target))
        restored = manager.restore(
            step,
            args=ocp.args.PyTreeRestore(
                item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract)
            ),
        )
        return tree_to_state(restored, target)

    def _try_restore(
        self, step: int, target: Any | None
    ) -> tuple[Any, integrity.StepProblem | None]:
        try:
            return self._restore_step(step, target), None
        except Exception as e:  # orbax/tensorstore raise many types on bad or missing files
            return None, integrity.classify_failed_read(self._step_dir(step), step, e)

    def _structure_mismatch(self, step: int, target: Any) -> str | None:
        """Describes how the saved arrays differ from `target`'s; None if they match or the
        metadata cannot be read (then the read itself decides)."""
        try:
            metadata = self.manager.item_metadata(step)
            saved = [tuple(m.shape) for m in jax.tree.leaves(getattr(metadata, "tree", metadata))]
        except Exception:  # unreadable metadata: judged by the restore attempt
            return None
        wanted = [tuple(np.shape(x)) for x in jax.tree.leaves(state_to_tree(target))]
        if sorted(saved) == sorted(wanted):
            return None
        if len(saved) != len(wanted):
            return f"it holds {len(saved)} arrays, this run's state has {len(wanted)}"
        first = next(a for a, b in zip(sorted(saved), sorted(wanted)) if a != b)
        return f"array shapes differ (e.g. saved {first})"

    def _set_aside(self, problem: integrity.StepProblem) -> str:
        """What happened to a bad step (a reader leaves every step where it is)."""
        return "left in place"

    def _report(self, problem: integrity.StepProblem, report: Callable[[str], None]) -> None:
        step, detail = problem.step, problem.detail
        if problem.kind == integrity.VANISHED:
            report(f"checkpoint at step {step} was deleted while being read; falling back")
        elif problem.kind == integrity.UNREADABLE:
            report(f"checkpoint at step {step} cannot be read: {detail}; left in place, "
                   "falling back")
        else:
            report(f"checkpoint at step {step} is unusable: {detail}; "
                   f"{self._set_aside(problem)}; falling back")

    def restore_latest(
        self, target: Any | None = None, report: Callable[[str], None] = logging.warning
    ) -> tuple[int, Any] | None:
        """Restores the newest good checkpoint; None when the workdir has no checkpoint history.

        Steps are tried newest first. A step whose integrity record is missing (written before
        records existed, or lost) is used only when no verified step is left.

        Args:
          target: a `TrainState` (or dict) of arrays or `jax.ShapeDtypeStruct`s with shardings,
            giving structure, dtypes and placement; None restores host numpy arrays as dicts.
          report: called with one line for every bad step skipped.

        Returns:
          (step, state); `restored_extra` then holds the bookkeeping saved with that step.

        Raises:
          CheckpointError: checkpoints exist (or were set aside as corrupt) but none of them
            can be used, or the newest intact one holds a differently shaped state than
            `target` (a config change). The message is one line saying what to do.
        """
        problems: list[integrity.StepProblem] = []
        unverified: list[int] = []
        tried: set[int] = set()
        while True:
            # Listed afresh each time: a live run may have committed or removed steps meanwhile.
            left = [s for s in self.all_steps() if s not in tried]
            if not left:
                break
            step = left[-1]
            tried.add(step)
            problem = integrity.check_step(self._step_dir(step), step)
            if problem is not None and problem.kind == integrity.UNVERIFIABLE:
                unverified.append(step)
                continue
            if problem is None:
                mismatch = None if target is None else self._structure_mismatch(step, target)
                if mismatch:
                    # An intact checkpoint of a different model/optimiser: not corruption.
                    raise CheckpointError(
                        f"checkpoint at step {step} in {self.directory} does not fit this run's "
                        f"state ({mismatch}); the model, optimiser or ema_decay changed since it "
                        "was written. Use a new workdir, or restore the old config."
                    )
                restored, problem = self._try_restore(step, target)
                if problem is None:
                    for newer in unverified:
                        self._report(integrity.StepProblem(
                            newer, integrity.UNVERIFIABLE,
                            f"it has no integrity record ({MANIFEST}), so it cannot be verified",
                        ), report)
                    self.restored_extra = integrity.read_extra(self._step_dir(step))
                    return step, restored
            problems.append(problem)
            self._report(problem, report)
        for step in sorted(unverified, reverse=True):  # the last resort: unverified steps
            restored, problem = self._try_unverified(step, target)
            if problem is None:
                report(
                    f"checkpoint at step {step} has no integrity record ({MANIFEST}) and could "
                    "not be verified; using it because no verified step is left"
                )
                self.restored_extra = integrity.read_extra(self._step_dir(step))
                return step, restored
            problems.append(problem)
            if problem.kind != integrity.MISMATCH:
                self._report(problem, report)
        _raise_if_history(self.directory, problems, self.read_only)
        return None

    def _try_unverified(
        self, step: int, target: Any | None
    ) -> tuple[Any, integrity.StepProblem | None]:
        mismatch = None if target is None else self._structure_mismatch(step, target)
        if mismatch:
            return None, integrity.StepProblem(
                step, integrity.MISMATCH,
                f"no integrity record, and it does not fit this run's state ({mismatch})",
            )
        return self._try_restore(step, target)


def _raise_if_history(
    directory: str, problems: list[integrity.StepProblem], read_only: bool
) -> None:
    """Raises the one-line `CheckpointError` when nothing was restored from `directory` but it
    has history: unusable steps now, or steps an earlier run set aside as corrupt."""
    problems = [p for p in problems if p.kind != integrity.VANISHED]
    aside_dir = os.path.join(os.path.dirname(directory), CORRUPT_DIR)
    earlier = _set_aside_steps(directory)
    if not problems and not earlier:
        return
    if problems and all(p.kind == integrity.MISMATCH for p in problems):
        raise CheckpointError(
            f"the checkpoints in {directory} do not fit this run's state (step "
            f"{problems[0].step}: {problems[0].detail}); the model, optimiser or ema_decay "
            "changed since they were written. Use a new workdir, or restore the old config."
        )
    parts = [f"step {p.step}: {p.detail}" for p in problems]
    if problems:
        head = f"no usable checkpoint in {directory} ({'; '.join(parts)})"
    else:
        steps = ", ".join(str(s) for s in earlier)
        head = (f"no checkpoint in {directory}, but {aside_dir} holds step(s) {steps} set aside "
                "as unusable by an earlier run")
    unreadable = any(p.kind == integrity.UNREADABLE for p in problems)
    if read_only:
        advice = "nothing was moved or changed" + (
            "; fix the access to the unreadable steps and rerun" if unreadable else ""
        )
    elif problems and all(p.kind == integrity.UNREADABLE for p in problems):
        advice = "fix the access to those files (permissions, mount) and rerun"
    else:
        advice = (
            "refusing to start again from step 0 over this run's history: "
            + ("fix the access to the unreadable steps, " if unreadable else "")
            + f"put a good checkpoint back into {directory}, or delete {aside_dir} to start "
            "over, or use a new workdir"
        )
    raise CheckpointError(f"{head}; {advice}")


class Checkpointer(CheckpointReader):
    """Orbax CheckpointManager for `workdir/checkpoints`: the training run's reader and writer.

    All processes must call `save`, `restore_latest` and `close` together (checkpoints are
    written collectively); integrity records and moving bad steps aside happen on process 0.

    Args:
      directory: the checkpoint directory (`workdir/checkpoints`).
      keep: checkpoints kept on disk (older ones are deleted after each commit).
      async_save: write in a background thread while training goes on.
      lock: the workdir's lock, taken here (`WorkdirLockedError` when another run holds it)
        and released by `close`; while it is held, temporary directories of saves a crashed
        run left behind are removed.
    """

    read_only = False

    def __init__(
        self,
        directory: str,
        keep: int = 3,
        async_save: bool = True,
        lock: WorkdirLock | None = None,
    ):
        if keep < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {keep}")
        super().__init__(directory)
        self._keep = keep
        self._async = async_save
        self._lock = lock
        self._extras: dict[int, dict[str, Any]] = {}
        self._pending_step: int | None = None
        self._failed_step: int | None = None
        self._log_filter = _DropStorageErrorLogs()
        if lock is not None:
            acquire_for_run(lock)
        try:
            for name in self._log_filter.loggers:
                std_logging.getLogger(name).addFilter(self._log_filter)
            _ignore_late_callbacks_of_failed_writes()  # before any save can fail
            self._remove_unfinished_saves()
            self._manager = self._new_manager()
        except BaseException:
            self._release()
            raise

    def _options(self) -> ocp.CheckpointManagerOptions:
        return ocp.CheckpointManagerOptions(
            max_to_keep=self._keep,
            create=True,
            enable_async_checkpointing=self._async,
            temporary_path_class=_integrity_path_class(self.directory, self._extras),
        )

    def _remove_unfinished_saves(self) -> None:
        """Deletes temporary directories of saves a crashed run left behind (they can be
        large). Only while holding the workdir lock: another run's save might be in flight."""
        if self._lock is None or jax.process_index() != 0:
            return
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        for name in names:
            if name.endswith(TMP_SUFFIX) and name[: -len(TMP_SUFFIX)].isdigit():
                logging.warning("removing the unfinished save %s", os.path.join(self.directory,
                                                                                 name))
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

    def _release(self) -> None:
        # After a failed save, orbax's abandoned write tasks may still log when collected.
        if self._failed_step is None:
            for name in self._log_filter.loggers:
                std_logging.getLogger(name).removeFilter(self._log_filter)
        if self._lock is not None:
            self._lock.release()

    def _save_error(self, step: int, error: BaseException) -> BaseException | None:
        """The one-line `CheckpointSaveError` for a storage error while saving `step`; None for
        any other error (a bug keeps its traceback)."""
        problem = storage_problem(error)
        if problem is None:
            return None
        self._failed_step = step
        if jax.process_index() == 0:  # free what the failed save took; the lock makes it ours
            shutil.rmtree(self._step_dir(step) + TMP_SUFFIX, ignore_errors=True)
        older = [s for s in self.all_steps() if s != step]
        kept = (f"the last good step {older[-1]} is intact" if older
                else "no earlier step was committed")
        advice = _ADVICE.get(problem, f"make {self.directory} writable and rerun")
        return CheckpointSaveError(
            f"{problem} while saving step {step} to {self._step_dir(step)}; {advice}: {kept}"
        )

    def _finish_pending(self) -> None:
        step, self._pending_step = self._pending_step, None
        if self._manager is None:  # nothing in flight (steps were moved: orbax starts afresh)
            return
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            if step is not None:
                self._extras.pop(step, None)
                failure = self._save_error(step, e)
                if failure is not None:
                    raise failure from e
            raise

    def save(self, step: int, state: Any, extra: dict[str, Any] | None = None) -> bool:
        """Starts saving `state` as `step` (async); False if that step (or a newer one) exists.

        `extra` (JSON-serialisable loop bookkeeping) is stored in the step's integrity record
        and comes back as `restored_extra` after a restore.

        Raises:
          CheckpointSaveError: this save or the previous (async) one failed for lack of space
            or permission; the message names the step, the path and the last good step.
        """
        self._finish_pending()
        existing = self.all_steps()
        if step in existing or (existing and existing[-1] > step):
            logging.warning("not saving step %d: %s already holds step %d", step,
                            self.directory, existing[-1] if existing[-1] > step else step)
            return False
        self._extras[step] = dict(extra or {})
        try:
            self._probe_writable(step)
            saved = self.manager.save(step, args=ocp.args.PyTreeSave(state_to_tree(state)))
        except Exception as e:
            self._extras.pop(step, None)
            failure = self._save_error(step, e)
            if failure is not None:
                raise failure from e
            raise
        if saved:
            self._pending_step = step
        else:
            self._extras.pop(step, None)
        return bool(saved)

    def _probe_writable(self, step: int) -> None:
        """Creates and removes a directory where orbax will create the step's. orbax creates
        it in a background thread whose failure leaves its other threads waiting minutes for
        a signal; failing here first ends the run at once."""
        probe = os.path.join(self.directory, f".write-probe-{step}-{uuid.uuid4().hex[:8]}")
        os.mkdir(probe)
        os.rmdir(probe)

    def wait(self) -> None:
        """Blocks until the last save is committed (with its integrity record)."""
        self._finish_pending()

    def close(self) -> None:
        """Waits for the last save, closes orbax and releases the workdir lock."""
        try:
            self._finish_pending()
        finally:
            try:
                if self._manager is not None:
                    self._manager.close()
                    self._manager = None
            except Exception:
                if self._failed_step is None:
                    raise
            finally:
                self._release()

    def restore_latest(
        self, target: Any | None = None, report: Callable[[str], None] = logging.warning
    ) -> tuple[int, Any] | None:
        self._finish_pending()
        return super().restore_latest(target, report)

    restore_latest.__doc__ = CheckpointReader.restore_latest.__doc__

    def _set_aside(self, problem: integrity.StepProblem) -> str:
        """Moves a corrupt or unverifiable step to `workdir/checkpoints_corrupt/`, so a later
        save of that step number writes afresh; read errors stay where they are."""
        if problem.kind not in (integrity.CORRUPT, integrity.UNVERIFIABLE):
            return "left in place"
        step = problem.step
        outcome = ""
        if jax.process_index() == 0:
            aside = os.path.join(os.path.dirname(self.directory), CORRUPT_DIR)
            destination = os.path.join(aside, f"{step}-{int(time.time())}")
            try:
                os.makedirs(aside, exist_ok=True)
                os.rename(self._step_dir(step), destination)  # never a partial copy
                outcome = f"moved to {destination}"
            except OSError as e:
                outcome = f"could not move it aside ({e.strerror}), left in place"
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"fsq_jax_checkpoint_move_{step}")
        self._reset_manager()
        return outcome or "moved aside by process 0"


def _abstract_leaf(leaf: Any) -> Any:
    if isinstance(leaf, jax.ShapeDtypeStruct):
        if leaf.sharding is None:
            return jax.ShapeDtypeStruct(
                leaf.shape,
                leaf.dtype,
                sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]),
            )
        return leaf
    if isinstance(leaf, jax.Array):
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
    array = np.asarray(leaf)
    return jax.ShapeDtypeStruct(
        array.shape, array.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    )


def restore_latest(workdir: str, target: Any = None) -> tuple[Any, Any]:
    """A run's config and its newest good checkpoint, read without changing the workdir.

    Args:
      workdir: a run directory.
      target: None restores host numpy arrays as a dict with keys `step`, `params`,
        `opt_state`, `ema_params`, `model_state`. For a typed `TrainState` pass the abstract
        state of the task that wrote it (`jax.eval_shape(task.init_state, rng, batch)`).

    Raises:
      FileNotFoundError: no config.json or no checkpoint in `workdir`.
    """
    config = run_dir.read_config(workdir)
    directory = os.path.join(workdir, run_dir.CHECKPOINT_DIR)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoints in {workdir!r}")
    with CheckpointReader(directory) as reader:  # never moves or deletes anything
        restored = reader.restore_latest(target=target)
    if restored is None:
        raise FileNotFoundError(f"no checkpoints in {directory!r}")
    return config, restored[1]
