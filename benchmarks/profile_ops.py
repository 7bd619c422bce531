"""Where a step's device time goes: a jax.profiler trace summarised to its top operations.

An MFU figure says how far a step is from the chip's peak, not why. Tracing a few steps and
adding up the device's operations by name answers the why: which fusions, matrix products or
kernels take the time, and how much of the step the device sits idle (launch gaps, host work).
"""

from __future__ import annotations

import collections
import glob
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax

# Events on a host thread that are the runtime's bookkeeping, not an operation of the program.
_HOST_BOOKKEEPING = ("ThreadpoolListener", "ThunkExecutor", "end: ")


def trace_top_ops(run: Callable[[], Any], steps: int = 3, count: int = 12) -> dict[str, Any]:
    """Traces `steps` calls of `run` (one warm call first) and summarises the device's time.

    Returns {"source", "steps", "wall_ms_per_step", "busy_ms_per_step", "busy_fraction",
    "top": [{"name", "ms_per_step", "share"}...], "kernels_per_step",
    "launch_api_ms_per_step"}; `share` is of the busy time.
    """
    jax.block_until_ready(run())
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        with jax.profiler.trace(directory):
            for _ in range(steps):
                out = run()
            jax.block_until_ready(out)
        wall = time.perf_counter() - start
        paths = glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True)
        if not paths:
            raise RuntimeError(f"the profiler wrote no trace under {directory}")
        profile = jax.profiler.ProfileData.from_file(paths[0])
        totals, source = operation_times(profile)
        launches = launch_calls(profile)
    summary = summarise(totals, source, steps, wall, count)
    summary.update(kernels_per_step=launches[0] / steps,
                   launch_api_ms_per_step=launches[1] / 1e6 / steps)
    return summary


def launch_calls(profile: Any) -> tuple[int, float]:
    """(number, total ns) of the host's kernel-launch API calls (CUDA's cuLaunchKernel and
    kin, as the profiler records them): many short kernels make a step launch-bound."""
    number, total = 0, 0.0
    for plane in profile.planes:
        if plane.name.startswith("/device:"):
            continue
        for line in plane.lines:
            for event in line.events:
                if "LaunchKernel" in event.name:
                    number += 1
                    total += event.duration_ns
    return number, total


def operation_times(profile: Any) -> tuple[dict[str, float], str]:
    """Nanoseconds per operation name, from the best view the trace has.

    GPU/TPU: the device plane's "XLA Ops" line (one event per HLO operation), else its stream
    lines (one event per kernel). CPU: the host threads' operation events.
    """
    devices = [p for p in profile.planes if p.name.startswith("/device:")]
    for plane in devices:
        for line in plane.lines:
            if line.name == "XLA Ops":
                return _add_up([line]), "XLA Ops"
    streams = [line for plane in devices for line in plane.lines
               if line.name.startswith("Stream")]
    if streams:
        return _add_up(streams), "kernels"
    hosts = [line for plane in profile.planes if plane.name == "/host:CPU"
             for line in plane.lines if line.name.startswith("tf_XLA")]
    return _add_up(hosts), "host threads"


def _add_up(lines: list[Any]) -> dict[str, float]:
    """Nanoseconds per name over the innermost events of each line (a `while` or `call`
    event that encloses the operations it runs would count their time twice)."""
    totals: dict[str, float] = collections.defaultdict(float)
    for line in lines:
        events = sorted((e for e in line.events if e.duration_ns > 0
                         and not e.name.startswith(_HOST_BOOKKEEPING)),
                        key=lambda e: (e.start_ns, -e.duration_ns))
        for i, event in enumerate(events):
            following = events[i + 1] if i + 1 < len(events) else None
            encloses_next = (following is not None
                             and following.start_ns < event.start_ns + event.duration_ns)
            if not encloses_next:
                totals[event.name] += event.duration_ns
    return dict(totals)


def summarise(totals: dict[str, float], source: str, steps: int, wall_seconds: float,
              count: int) -> dict[str, Any]:
    """The `count` largest operations, in ms per step and as a share of the busy time."""
    busy = sum(totals.values())
    top = sorted(totals.items(), key=lambda item: -item[1])[:count]
    wall_ms = 1e3 * wall_seconds / steps
    busy_ms = busy / 1e6 / steps
    return {
        "source": source, "steps": steps, "wall_ms_per_step": wall_ms,
        "busy_ms_per_step": busy_ms,
        "busy_fraction": busy_ms / wall_ms if wall_ms else 0.0,
        "top": [{"name": name, "ms_per_step": ns / 1e6 / steps,
                 "share": ns / busy if busy else 0.0} for name, ns in top]}
