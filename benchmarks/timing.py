"""Timing helpers shared by the training-speed benchmarks (maskgit.py, uvim.py)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

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


class CompiledStep(NamedTuple):
    """A task's train step compiled once, with what XLA says it costs."""

    run: Callable[[], Any]  # one step on the held state (donated and replaced each call)
    # FLOPs per step that XLA counts in the program as traced (rematerialised forward passes
    # included). Counted before optimisation: after it, the GPU backend's matrix products are
    # library calls its cost analysis does not count (a 19x undercount of the MaskGIT step).
    flops: float | None
    compile_seconds: float
    memory: dict[str, float]  # XLA's memory analysis of the step, GiB


def compile_train_step(task: Any, batch: Any) -> CompiledStep:
    """Initialises a task's state and compiles its train step on `batch`.

    `task` has the loop's interface: `init_state(rng, batch)` and
    `train_step(state, batch, rng) -> (state, metrics)`.
    """
    state = jax.jit(task.init_state)(jax.random.key(0), batch)
    step = jax.jit(task.train_step, donate_argnums=(0,))
    start = time.perf_counter()
    lowered = step.lower(state, batch, jax.random.key(1))
    compiled = lowered.compile()
    compile_seconds = time.perf_counter() - start
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], batch, jax.random.key(1))
        return metrics

    return CompiledStep(run, _flops(lowered) or _flops(compiled), compile_seconds,
                        _memory_gib(compiled))


def _flops(stage: Any) -> float | None:
    try:
        analysis = stage.cost_analysis()
        analysis = analysis[0] if isinstance(analysis, list | tuple) else analysis
        return float(analysis.get("flops", 0.0)) or None
    except Exception:  # cost analysis is best effort on some backends
        return None


def _memory_gib(compiled: Any) -> dict[str, float]:
    try:
        analysis = compiled.memory_analysis()
    except Exception:  # best effort, as the cost analysis
        return {}
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
              "temp_size_in_bytes", "generated_code_size_in_bytes")
    return {name.replace("_size_in_bytes", "_gib"): getattr(analysis, name) / 2**30
            for name in fields if hasattr(analysis, name)}


def transformer_train_flops(task: Any, batch_size: int) -> float:
    """Model FLOPs of one MaskGIT stage-II step: 3x the transformer's forward (forward +
    backward); the frozen tokenizer's encoder forward is not counted (it is not trained)."""
    from maskgit import transformer

    per_token = transformer.flops_per_token(task.config.model, task.codebook_size, task.seq_len)
    return 3.0 * per_token * (task.seq_len + 1) * batch_size


def train_rate(task: Any, batch: Any, steps: int, warmup: int
               ) -> tuple[float, float | None, float]:
    """(steps/s, XLA-counted FLOPs per step or None, compile seconds) of a task's train step."""
    step = compile_train_step(task, batch)
    seconds = seconds_per_call(step.run, steps, warmup)
    return 1.0 / seconds, step.flops, step.compile_seconds
