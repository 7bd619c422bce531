"""Checkpoints of the training state with orbax: keep-n, async, verified, and corruption-tolerant.

Each finished checkpoint gets a manifest of its files (sizes and CRC32), written once orbax has
committed it. Restore checks the manifest and the orbax read; a truncated or corrupted step is
reported by number, moved aside, and the previous good step is used instead. Orbax writes to a
temporary directory and renames on commit, so a crash mid-save never replaces a good checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

MANIFEST = "fsq_manifest.json"
CORRUPT_DIR = "checkpoints_corrupt"
STATE_FIELDS = ("step", "params", "opt_state", "ema_params", "model_state")
# Replicated arrays below this size are written by one replica instead of being sliced across
# replicas: slicing compiles one small program per shape, which dominates small checkpoints.
REPLICA_PARALLEL_MIN_BYTES = 4 << 20


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
    """No usable checkpoint could be restored."""


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


def _file_crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def _manifest(step_dir: str) -> dict[str, list[int]]:
    files = {}
    for root, _, names in os.walk(step_dir):
        for name in names:
            if name == MANIFEST:
                continue
            path = os.path.join(root, name)
            files[os.path.relpath(path, step_dir)] = [os.path.getsize(path), _file_crc32(path)]
    return files


def _read_extra(step_dir: str) -> dict[str, Any]:
    try:
        with open(os.path.join(step_dir, MANIFEST)) as f:
            return dict(json.load(f).get("extra", {}))
    except (OSError, ValueError):
        return {}


def verify_step_dir(step_dir: str) -> str | None:
    """Checks a committed step directory against its manifest; returns a problem or None.

    A step without manifest (the run stopped between commit and manifest) is not judged here;
    the orbax read decides.
    """
    path = os.path.join(step_dir, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            expected = json.load(f)["files"]
    except (OSError, ValueError, KeyError) as e:
        return f"unreadable manifest ({e})"
    for rel, (size, crc) in sorted(expected.items()):
        file_path = os.path.join(step_dir, rel)
        if not os.path.exists(file_path):
            return f"missing file {rel}"
        actual_size = os.path.getsize(file_path)
        if actual_size != size:
            return f"file {rel} has {actual_size} bytes, expected {size} (truncated?)"
        if _file_crc32(file_path) != crc:
            return f"file {rel} fails its CRC32 check (corrupted)"
    return None


class Checkpointer:
    """Orbax CheckpointManager for `workdir/checkpoints` with manifests and fallback restore.

    All processes must call `save`, `restore_latest` and `close` together (checkpoints are
    written collectively); manifests and moving bad steps aside happen on process 0 only.
    """

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {keep}")
        self.directory = os.path.abspath(directory)
        self._keep = keep
        self._async = async_save
        self._pending_manifest: tuple[int, dict[str, Any]] | None = None
        self.restored_extra: dict[str, Any] = {}
        self._manager = self._new_manager()

    def _new_manager(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self._keep, create=True, enable_async_checkpointing=self._async
        )
        return ocp.CheckpointManager(
            self.directory,
            item_handlers=ocp.PyTreeCheckpointHandler(
                type_handler_registry=_type_handler_registry()
            ),
            options=options,
        )

    def all_steps(self) -> list[int]:
        """Committed checkpoint steps, ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def _finish_pending(self) -> None:
        self._manager.wait_until_finished()
        pending, self._pending_manifest = self._pending_manifest, None
        if pending is None or jax.process_index() != 0:
            return
        step, extra = pending
        step_dir = os.path.join(self.directory, str(step))
        if not os.path.isdir(step_dir):
            return
        manifest = {"step": step, "extra": extra, "files": _manifest(step_dir)}
        tmp = os.path.join(step_dir, MANIFEST + ".tmp")
        with open(tmp, "w") as f:
            json.dump(manifest, f)
        os.replace(tmp, os.path.join(step_dir, MANIFEST))

    def save(self, step: int, state: Any, extra: dict[str, Any] | None = None) -> bool:
        """Starts saving `state` as `step` (async); False if that step already exists.

        `extra` (JSON-serialisable loop bookkeeping) is stored in the step's manifest and
        comes back as `restored_extra` after a restore.
        """
        self._finish_pending()
        if step in self._manager.all_steps():
            return False
        self._manager.save(step, args=ocp.args.PyTreeSave(state_to_tree(state)))
        self._pending_manifest = (step, dict(extra or {}))
        return True

    def wait(self) -> None:
        """Blocks until the last save is committed and its manifest written."""
        self._finish_pending()

    def close(self) -> None:
        self._finish_pending()
        self._manager.close()

    def _restore_step(self, step: int, target: Any | None) -> Any:
        if target is None:
            metadata = self._manager.item_metadata(step)
            tree = getattr(metadata, "tree", metadata)
            restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
            return self._manager.restore(
                step, args=ocp.args.PyTreeRestore(restore_args=restore_args)
            )
        abstract = jax.tree.map(_abstract_leaf, state_to_tree(target))
        restored = self._manager.restore(
            step,
            args=ocp.args.PyTreeRestore(
                item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract)
            ),
        )
        return tree_to_state(restored, target)

    def _structure_mismatch(self, step: int, target: Any) -> str | None:
        """Describes how the saved arrays differ from `target`'s; None if they match or the
        metadata cannot be read (then the read itself decides)."""
        try:
            metadata = self._manager.item_metadata(step)
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

    def _move_aside(self, step: int) -> None:
        if jax.process_index() == 0:
            aside = os.path.join(os.path.dirname(self.directory), CORRUPT_DIR)
            os.makedirs(aside, exist_ok=True)
            destination = os.path.join(aside, f"{step}-{int(time.time())}")
            shutil.move(os.path.join(self.directory, str(step)), destination)
            logging.warning("moved corrupt checkpoint %d to %s", step, destination)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"fsq_jax_checkpoint_move_{step}")
        self._manager.close()
        self._manager = self._new_manager()

    def restore_latest(
        self, target: Any | None = None, report: Callable[[str], None] = logging.warning
    ) -> tuple[int, Any] | None:
        """Restores the newest good checkpoint; None when there is none at all.

        Args:
          target: a `TrainState` (or dict) of arrays or `jax.ShapeDtypeStruct`s with shardings,
            giving structure, dtypes and placement; None restores host numpy arrays as dicts.
          report: called with one line for every bad step skipped.

        Returns:
          (step, state). Bad steps are moved to `workdir/checkpoints_corrupt/`.

        Raises:
          CheckpointError: checkpoints exist but none of them can be read, or the newest
            intact one holds a differently shaped state than `target` (a config change).
        """
        self._finish_pending()
        problems = []
        for step in reversed(self.all_steps()):
            step_dir = os.path.join(self.directory, str(step))
            problem = verify_step_dir(step_dir)
            mismatch = None if problem or target is None else self._structure_mismatch(step, target)
            if mismatch:
                # An intact checkpoint of a different model/optimiser: not corruption.
                raise CheckpointError(
                    f"checkpoint at step {step} in {self.directory} does not fit this run's "
                    f"state ({mismatch}); the model, optimiser or ema_decay changed since it "
                    "was written. Use a new workdir, or restore the old config."
                )
            if problem is None:
                try:
                    restored = self._restore_step(step, target)
                    self.restored_extra = _read_extra(step_dir)
                    return step, restored
                except Exception as e:  # orbax/tensorstore raise many types on bad files
                    problem = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            line = f"checkpoint at step {step} is unusable: {problem}; falling back"
            report(line)
            problems.append(line)
            self._move_aside(step)
        if problems:
            raise CheckpointError(
                f"no usable checkpoint in {self.directory}: " + " | ".join(problems)
            )
        return None


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
