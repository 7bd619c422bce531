"""One training run per workdir: an exclusive lock file, and one-line reports of storage errors.

A second run on a workdir would interleave checkpoints and metrics with the first, so a training
run holds `WORKDIR/train.lock` (pid, host, start time) while it runs; a lock left by a killed run
is recognised by its dead pid on the same host and taken over with a warning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import socket
import sysconfig
import time
import traceback
import uuid
from typing import Any

from absl import logging

LOCK_FILE = "train.lock"
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK}

# errno values of a storage problem the user must fix (not a bug), with the words for it.
_STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.EIO: "input/output error",
}
# The same problems as tensorstore (inside orbax) words them: it raises ValueErrors.
_STORAGE_TEXT = {
    "No space left on device": "no space left on device",
    "os_error_code='28'": "no space left on device",
    "Disk quota exceeded": "disk quota exceeded",
    "Permission denied": "permission denied",
    "PERMISSION_DENIED": "permission denied",
    "Read-only file system": "read-only file system",
}


class WorkdirError(RuntimeError):
    """A workdir problem the user must act on; the message is one line saying what to do."""


class WorkdirLockedError(WorkdirError):
    """Another training run holds the workdir."""


def exception_chain(error: BaseException) -> list[BaseException]:
    """`error` followed by its causes and contexts (each once), outermost first."""
    chain: list[BaseException] = []
    while error is not None and all(error is not seen for seen in chain):
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def storage_problem(error: BaseException) -> str | None:
    """'no space left on device', 'permission denied', ... when `error` (or what caused it) is
    such a storage error, else None."""
    for link in exception_chain(error):
        if isinstance(link, OSError) and link.errno in _STORAGE_ERRNOS:
            return _STORAGE_ERRNOS[link.errno]
        text = str(link)
        for needle, words in _STORAGE_TEXT.items():
            if needle in text:
                return words
    return None


def error_line(error: BaseException) -> str | None:
    """One line for a failed run: the first `WorkdirError` in the exception chain (a storage
    error while closing must not hide the checkpoint that could not be saved), else a storage
    `OSError` with its path; None for anything else (a bug keeps its traceback)."""
    chain = exception_chain(error)
    for link in reversed(chain):  # the innermost is what went wrong first
        if isinstance(link, WorkdirError):
            return str(link)
    for link in chain:
        if isinstance(link, OSError) and (link.errno in _STORAGE_ERRNOS or link.filename):
            what = link.strerror or str(link)
            path = f": {link.filename}" if link.filename else ""
            where = _our_frame(link)
            return (f"storage error: {what}{path} ({type(link).__name__}, errno {link.errno}"
                    f"{', while in ' + where if where else ''})")
    return None


def _our_frame(error: BaseException) -> str | None:
    """`function (file:line)` of the innermost frame of `error` in this project's code (not
    the standard library or an installed package): what was being done."""
    library = tuple(
        os.path.realpath(sysconfig.get_paths()[key]) for key in ("stdlib", "purelib", "platlib")
    )
    found = None
    for frame, line in traceback.walk_tb(error.__traceback__):
        if frame.f_code.co_filename.startswith("<"):  # "<frozen os>": the standard library
            continue
        path = os.path.realpath(frame.f_code.co_filename)
        if not path.startswith(library):
            found = f"{frame.f_code.co_name} ({os.path.basename(path)}:{line})"
    return found


@dataclasses.dataclass(frozen=True)
class LockHolder:
    """Who holds a workdir lock: the process, its host, and when it took the lock."""

    pid: int
    host: str
    started: float  # time.time() when the lock was taken
    process_start: float | None  # the process's own start time, to tell a reused pid apart
    token: str

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host}, started {when}"


def _process_start(pid: int) -> float | None:
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:  # no psutil, no such process, or no access: judged by the pid alone
        return None


def _is_running(holder: LockHolder) -> bool:
    """Whether `holder` (a process on this host) still runs; a reused pid does not count."""
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        pass
    started = _process_start(holder.pid)
    if started is not None and holder.process_start is not None:
        return abs(started - holder.process_start) < 1.0
    return True


class WorkdirLock:
    """The exclusive lock of a training run on `workdir` (`WORKDIR/train.lock`).

    `acquire()` creates the lock file atomically (written aside, then hard-linked into place, so
    no reader ever sees a half-written holder); `release()` removes it if it is still ours.
    """

    def __init__(self, workdir: str):
        self.workdir = os.path.abspath(workdir)
        self.path = os.path.join(self.workdir, LOCK_FILE)
        self._token: str | None = None

    @property
    def held(self) -> bool:
        return self._token is not None

    def holder(self, patience_s: float = 1.0) -> tuple[LockHolder, int] | None:
        """The current holder and the lock file's inode; None when there is no lock file."""
        deadline = time.monotonic() + patience_s
        while True:
            try:
                return self._read_holder()
            except WorkdirLockedError:
                if time.monotonic() > deadline:  # not just being written: really unreadable
                    raise
                time.sleep(0.05)

    def _read_holder(self) -> tuple[LockHolder, int] | None:
        try:
            with open(self.path) as f:
                inode = os.fstat(f.fileno()).st_ino
                text = f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise WorkdirError(
                f"cannot read the workdir lock {self.path}: {e.strerror} (errno {e.errno})"
            ) from None
        try:
            fields = json.loads(text)
            return LockHolder(
                pid=int(fields["pid"]),
                host=str(fields["host"]),
                started=float(fields["started"]),
                process_start=fields.get("process_start"),
                token=str(fields.get("token", "")),
            ), inode
        except (ValueError, KeyError, TypeError):
            raise WorkdirLockedError(
                f"workdir {self.workdir} has an unreadable lock file {self.path}; if no run "
                "uses this workdir, delete that file and rerun"
            ) from None

    def _create(self, content: dict[str, Any]) -> None:
        """Creates the lock file holding `content`; FileExistsError when it exists."""
        tmp = f"{self.path}.{content['token']}"
        try:
            with open(tmp, "w") as f:
                json.dump(content, f)
            try:
                os.link(tmp, self.path)  # FileExistsError when held: atomic, also on NFS
                return
            except OSError as e:
                if isinstance(e, FileExistsError) or e.errno not in _NO_HARD_LINKS:
                    raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        # A file system without hard links: O_EXCL (readers retry a lock still being written).
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(content, f)

    def _remove_stale(self, inode: int) -> None:
        """Removes the stale lock file (of `inode`), unless someone replaced it meanwhile."""
        aside = f"{self.path}.stale-{uuid.uuid4().hex}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another newcomer removed it first
        if os.stat(aside).st_ino != inode:  # a fresh lock of another run: put it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
        os.unlink(aside)

    def acquire(self) -> None:
        """Takes the lock, or raises `WorkdirLockedError` naming the live holder."""
        if self.held:
            return
        host = socket.gethostname()
        for _ in range(5):
            token = uuid.uuid4().hex
            content = {
                "pid": os.getpid(),
                "host": host,
                "started": time.time(),
                "process_start": _process_start(os.getpid()),
                "token": token,
            }
            try:
                self._create(content)
            except FileExistsError:
                pass
            except OSError as e:
                raise WorkdirError(
                    f"cannot create the workdir lock {self.path}: {e.strerror} (errno {e.errno})"
                ) from None
            else:
                self._token = token
                return
            found = self.holder()
            if found is None:
                continue  # released meanwhile: try again
            holder, inode = found
            if holder.host != host:
                raise WorkdirLockedError(
                    f"workdir {self.workdir} is in use by another training run "
                    f"({holder.describe()}; this host cannot tell whether it still runs): wait "
                    f"for it, or if it is gone, delete {self.path} and rerun"
                )
            if _is_running(holder):
                raise WorkdirLockedError(
                    f"workdir {self.workdir} is in use by another training run "
                    f"({holder.describe()}): wait for it to finish or stop it, or use another "
                    "workdir"
                )
            logging.warning(
                "taking over the lock %s left by %s, which no longer runs",
                self.path,
                holder.describe(),
            )
            self._remove_stale(inode)
        raise WorkdirLockedError(f"could not take the workdir lock {self.path}; rerun")

    def release(self) -> None:
        """Removes the lock file if this object holds it (a no-op otherwise)."""
        token, self._token = self._token, None
        if token is None:
            return
        try:
            found = self.holder(patience_s=0.0)
        except WorkdirError:
            return
        if found is not None and found[0].token == token:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def acquire_for_run(lock: WorkdirLock) -> None:
    """Takes `lock` on process 0; in a multi-process run every process learns the outcome, so
    all of them stop with the same one line when the workdir is held."""
    import jax

    error: WorkdirError | None = None
    if jax.process_index() == 0:
        try:
            lock.acquire()
        except WorkdirError as e:
            error = e
    if jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils

        failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
        if int(failed) and error is None:
            if lock.held:
                lock.release()
            error = WorkdirLockedError(
                f"workdir {lock.workdir}: process 0 could not take the lock {lock.path}"
            )
    if error is not None:
        raise error
