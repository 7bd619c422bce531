"""Timing helpers shared by the training-speed benchmarks (maskgit.py, uvim.py)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import jax


def seconds_per_call(fn: Callable[[], Any], steps: int, warmup: int) -> float:
    """Seconds per call of `fn` (after `warmup` calls that include compilation)."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    start = time.perf_counter()
    for _ in range(steps):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / steps


def emit(report: dict[str, Any], name: str) -> None:
    """Prints one finished measurement at once, so a run cut short still reports it."""
    print(f"{name}: {json.dumps(report[name])}", file=sys.stderr, flush=True)


def train_rate(task: Any, batch: Any, steps: int, warmup: int
               ) -> tuple[float, float | None, float]:
    """(steps/s, XLA-counted FLOPs per step or None, compile seconds) of a task's train step.

    `task` has the loop's interface: `init_state(rng, batch)` and
    `train_step(state, batch, rng) -> (state, metrics)`.
    """
    state = jax.jit(task.init_state)(jax.random.key(0), batch)
    step = jax.jit(task.train_step, donate_argnums=(0,))
    start = time.perf_counter()
    compiled = step.lower(state, batch, jax.random.key(1)).compile()
    compile_seconds = time.perf_counter() - start
    try:
        analysis = compiled.cost_analysis()
        analysis = analysis[0] if isinstance(analysis, list | tuple) else analysis
        flops = float(analysis.get("flops", 0.0)) or None
    except Exception:  # cost analysis is best effort on some backends
        flops = None
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], batch, jax.random.key(1))
        return metrics

    seconds = seconds_per_call(run, steps, warmup)
    return 1.0 / seconds, flops, compile_seconds
