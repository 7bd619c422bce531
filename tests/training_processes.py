"""Watching a training subprocess, for the tests that signal or kill it: its output line by line
and the checkpoints it has committed."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def read_until(process: subprocess.Popen, predicate: Callable[[str], bool],
               timeout: float = 300) -> list[str]:
    """The lines `process` printed up to the first one `predicate` accepts; kills the process
    and fails with its last lines if it ends or `timeout` seconds pass first."""
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if predicate(line):
            return lines
    process.kill()
    raise AssertionError("".join(lines[-30:]))


def committed_steps(workdir: str | Path) -> list[int]:
    """The steps with a committed checkpoint in `workdir`, ascending."""
    directory = Path(workdir) / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
