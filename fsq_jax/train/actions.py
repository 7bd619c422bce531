"""The loop's periodic work as clu periodic actions: progress reports, evaluation, pictures and
checkpoints each trigger every N steps and at the last step.

`ReportProgress` is clu's, printing one line per report with the training rate (time spent in
`timed(...)` parts such as evaluation left out), the ETA and the mean training metrics.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any


def format_duration(seconds: float) -> str:
    """`3725` -> `'1h02m05s'`."""
    seconds = max(round(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def progress_line(step: int, total: int, rate: float,
                  metrics: Mapping[str, float] | None = None) -> str:
    """`step 100/1000 (10%) 10.00 steps/s ETA 1m30s | loss=0.5`."""
    eta = format_duration((total - step) / rate) if rate > 0 else "?"
    line = f"step {step}/{total} ({100.0 * step / max(total, 1):.0f}%) {rate:.2f} steps/s ETA {eta}"
    if metrics:
        line += " | " + " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
    return line


def every(period: int, total: int) -> dict[str, Any]:
    """PeriodicAction triggers: every `period` steps (0 = never) and at step `total`."""
    return {"every_steps": period or None, "on_steps": [total]}


def __getattr__(name: str) -> Any:
    """`ReportProgress` is built on first use: clu's periodic actions import TensorFlow, which
    a script that stops at a config error (one line) should not spend seconds loading."""
    if name == "ReportProgress":
        return _report_progress_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _report_progress_class() -> type:
    from clu import periodic_actions

    class ReportProgress(periodic_actions.ReportProgress):
        """clu's progress report, printing `progress_line` with the metrics of `metrics_fn()`.

        The rate counts training time only: time inside `timed(...)` blocks since the last report
        is left out, so the ETA does not depend on how often the run evaluates.
        """

        def __init__(self, *, num_train_steps: int, every_steps: int,
                     metrics_fn: Callable[[int, float], Mapping[str, float]],
                     print_fn: Callable[[str], None] = print):
            super().__init__(num_train_steps=num_train_steps, every_steps=every_steps or None,
                             every_secs=None)
            self._metrics_fn = metrics_fn
            self._print = print_fn
            self._timed_at_last = 0.0

        def excluded(self) -> float:
            """Seconds spent in timed parts so far."""
            return sum(self._time_per_part.values())

        def _apply(self, step: int, t: float) -> None:
            timed = self.excluded()
            elapsed = max(t - self._previous_time - (timed - self._timed_at_last), 1e-9)
            self._timed_at_last = timed
            rate = (step - self._previous_step) / elapsed
            metrics = self._metrics_fn(step, rate)
            self._print(progress_line(step, self._num_train_steps, rate, metrics))

    return ReportProgress
