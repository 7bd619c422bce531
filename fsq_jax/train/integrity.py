"""Integrity records of checkpoint steps, and the check that sorts a bad step into what it is.

The record (sizes and CRC32s of the step's files) is written into orbax's temporary directory just
before it is renamed to the step number, so every committed step carries one. The check tells
corruption (move it aside) from a read error (leave it, it may be fine) from a lost record.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import zlib
from typing import Any

RECORD = "fsq_manifest.json"
FORMAT = 2
# Files orbax rewrites while committing, after the record is written (the step metadata gets
# its commit time, then the success marker): checked for presence and form, not by CRC.
COMMIT_FILES = ("_CHECKPOINT_METADATA", "commit_success.txt")

CORRUPT = "corrupt"  # bad CRC, truncated, missing file, undecodable: set aside
UNVERIFIABLE = "unverifiable"  # no integrity record: used only when no verified step is left
UNREADABLE = "unreadable"  # permissions, I/O, network file system: left in place, skipped
VANISHED = "vanished"  # deleted while being read (the owning run removed an old step)
MISMATCH = "mismatch"  # an unverifiable step of another model shape: left in place

# errno values that mean "cannot read it now", not "its bytes are wrong".
_READ_ERRNOS = {
    errno.EACCES,
    errno.EPERM,
    errno.EIO,
    errno.ESTALE,
    errno.ETIMEDOUT,
    errno.ENOTCONN,
    errno.EHOSTDOWN,
    errno.EHOSTUNREACH,
}
_READ_ERROR_TEXT = ("PERMISSION_DENIED", "Permission denied", "Stale file handle")


@dataclasses.dataclass(frozen=True)
class StepProblem:
    """Why a checkpoint step cannot be used: `kind` is one of the constants above."""

    step: int
    kind: str
    detail: str


def _file_crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def _file_table(step_dir: str) -> dict[str, list[int]]:
    files = {}
    for root, _, names in os.walk(step_dir):
        for name in sorted(names):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, step_dir)
            if rel == RECORD or rel in COMMIT_FILES:
                continue
            files[rel] = [os.path.getsize(path), _file_crc32(path)]
    return files


def write_record(step_dir: str, step: int, extra: dict[str, Any]) -> None:
    """Writes the integrity record of the (not yet committed) step in `step_dir`.

    `extra`: JSON-serialisable loop bookkeeping returned by `read_extra` after a restore.
    """
    record = {
        "format": FORMAT,
        "step": step,
        "extra": extra,
        "files": _file_table(step_dir),
        "commit_files": list(COMMIT_FILES),
    }
    path = os.path.join(step_dir, RECORD)
    with open(path + ".tmp", "w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def read_extra(step_dir: str) -> dict[str, Any]:
    """The `extra` stored with a step ({} when it has no readable record)."""
    try:
        with open(os.path.join(step_dir, RECORD)) as f:
            return dict(json.load(f).get("extra", {}))
    except (OSError, ValueError, AttributeError):
        return {}


def is_read_error(error: BaseException) -> bool:
    """Whether `error` (or what caused it) says the files cannot be read, rather than that they
    are damaged: permissions, I/O errors, a network file system gone away."""
    seen: list[BaseException] = []
    while error is not None and all(error is not s for s in seen):
        seen.append(error)
        if isinstance(error, OSError) and error.errno in _READ_ERRNOS:
            return True
        if any(text in str(error) for text in _READ_ERROR_TEXT):
            return True
        error = error.__cause__ or error.__context__
    return False


def _os_problem(step: int, step_dir: str, error: OSError, rel: str) -> StepProblem:
    if not os.path.isdir(step_dir):
        return StepProblem(step, VANISHED, "deleted while being read")
    path = os.path.join(step_dir, rel)
    if isinstance(error, FileNotFoundError):
        return StepProblem(step, CORRUPT, f"missing file {rel}")
    if error.errno in _READ_ERRNOS:
        return StepProblem(
            step, UNREADABLE, f"cannot read {path}: {error.strerror} (errno {error.errno})"
        )
    return StepProblem(step, CORRUPT, f"file {rel}: {error.strerror or error}")


def check_step(step_dir: str, step: int) -> StepProblem | None:
    """Checks a committed step directory against its integrity record; None when intact."""
    record_path = os.path.join(step_dir, RECORD)
    try:
        with open(record_path) as f:
            text = f.read()
    except OSError as e:
        if isinstance(e, FileNotFoundError) and os.path.isdir(step_dir):
            return StepProblem(step, UNVERIFIABLE, f"no integrity record ({RECORD})")
        return _os_problem(step, step_dir, e, RECORD)
    try:
        record = json.loads(text)
        expected = dict(record["files"])
        commit_files = list(record.get("commit_files", []))
    except (ValueError, KeyError, TypeError) as e:
        return StepProblem(step, CORRUPT, f"unreadable integrity record {RECORD} ({e})")
    for rel, (size, crc) in sorted(expected.items()):
        path = os.path.join(step_dir, rel)
        try:
            actual_size = os.path.getsize(path)
            if actual_size != size:
                return StepProblem(
                    step, CORRUPT, f"file {rel} has {actual_size} bytes, expected {size} "
                    "(truncated?)"
                )
            if _file_crc32(path) != crc:
                return StepProblem(step, CORRUPT, f"file {rel} fails its CRC32 check (corrupted)")
        except OSError as e:
            return _os_problem(step, step_dir, e, rel)
    for rel in commit_files:  # orbax's own bookkeeping: a missing one is orbax's to judge
        path = os.path.join(step_dir, rel)
        try:
            with open(path) as f:
                text = f.read()
            if rel.endswith("METADATA"):
                json.loads(text)
        except ValueError:
            return StepProblem(step, CORRUPT, f"file {rel} is not valid JSON (corrupted)")
        except FileNotFoundError:
            if not os.path.isdir(step_dir):
                return StepProblem(step, VANISHED, "deleted while being read")
        except OSError as e:
            return _os_problem(step, step_dir, e, rel)
    return None


def classify_failed_read(step_dir: str, step: int, error: BaseException) -> StepProblem:
    """What an exception from orbax's read of a step means for that step."""
    if not os.path.isdir(step_dir):
        return StepProblem(step, VANISHED, "deleted while being read")
    message = str(error).splitlines()[0] if str(error) else ""
    detail = f"{type(error).__name__}: {message}"
    if is_read_error(error):
        return StepProblem(step, UNREADABLE, f"cannot read it: {detail}")
    return StepProblem(step, CORRUPT, detail)
