"""Training curves from runs' `metrics.csv`: one PNG per group of metrics, for a person to see how
a run went (or how two runs compare) without TensorBoard.

The CSV (fsq_jax.train.writers.CsvWriter) has a `step` column and one column per metric, empty
where a step did not log that metric. Metrics are grouped by what they are (training losses,
evaluation, evaluators such as FID or usage, optimiser norms, speed); each metric gets its own
panel, since their scales differ by orders of magnitude, with one line per run.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

# Group -> the title of its figure, in the order they are written. `group_of` assigns columns.
GROUP_TITLES = {
    "train": "training metrics (means over each logging window)",
    "eval": "evaluation step (validation batches)",
    "evaluators": "evaluators (FID, codebook usage, task metrics)",
    "optimizer": "gradient, update and parameter norms",
    "speed": "training speed",
}
_OPTIMIZER_PREFIXES = ("grad_norm", "update_norm", "param_norm")
_SPEED_COLUMNS = ("steps_per_sec", "skipped_updates")

Curve = tuple[np.ndarray, np.ndarray]  # (steps int64 [n], values float64 [n])


def read_metrics(path: str | os.PathLike) -> dict[str, Curve]:
    """Column -> (steps, values) of a metrics.csv, leaving out the steps where it is empty.

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file has no `step` column, or a cell that is not a number (naming the
        line).
    """
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        if "step" not in columns:
            raise ValueError(f"{path}: no 'step' column (is it a metrics.csv?)")
        points: dict[str, list[tuple[int, float]]] = {c: [] for c in columns if c != "step"}
        for line, row in enumerate(reader, start=2):
            try:
                step = int(float(row["step"]))
                for column in points:
                    if row.get(column) not in (None, ""):
                        points[column].append((step, float(row[column])))
            except ValueError as error:
                raise ValueError(f"{path}, line {line}: {error}") from None
    return {column: (np.array([s for s, _ in p], np.int64), np.array([v for _, v in p]))
            for column, p in points.items() if p}


def group_of(column: str) -> str:
    """Which figure a metric belongs to (a key of GROUP_TITLES)."""
    if column in _SPEED_COLUMNS:
        return "speed"
    head, _, rest = column.partition("/")
    if head == "train" and rest.split("/")[0] in _OPTIMIZER_PREFIXES:
        return "optimizer"
    if head in _OPTIMIZER_PREFIXES:
        return "optimizer"
    if head in ("train", "eval"):
        return head
    return "evaluators"  # "<evaluator name>/<metric>", e.g. sampling/fid, codebook/usage


def _log_scale(values: Iterable[np.ndarray]) -> bool:
    """Positive values spanning more than two decades read better on a log axis."""
    finite = np.concatenate([v[np.isfinite(v)] for v in values])
    return finite.size > 1 and bool(np.all(finite > 0)) and finite.max() / finite.min() > 100


def plot_group(runs: Mapping[str, Mapping[str, Curve]], path: str | os.PathLike,
               title: str = "") -> Path:
    """One PNG with a panel per metric, one line per run (a legend when there are several).

    Args:
      runs: run label -> metric name -> (steps, values).
      path: the PNG to write.
      title: the figure's title.
    """
    from matplotlib.figure import Figure  # no pyplot: no global figure state, Agg canvas

    names = sorted({name for curves in runs.values() for name in curves})
    if not names:
        raise ValueError(f"{path}: no metric to plot")
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    fig = Figure(figsize=(4.2 * columns, 2.8 * rows + 0.6))
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for axis, name in zip(axes, names):
        drawn = [(label, curves[name]) for label, curves in runs.items() if name in curves]
        for label, (steps, values) in drawn:
            axis.plot(steps, values, "o-" if len(steps) <= 12 else "-", markersize=4,
                      linewidth=1.2, label=label)
        if _log_scale(values for _, (_, values) in drawn):
            axis.set_yscale("log")
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=8)
        axis.grid(alpha=0.3)
        if len(runs) > 1:
            axis.legend(fontsize=7)
    for axis in axes[len(names):]:
        axis.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    return path


def _csv(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / "metrics.csv" if path.is_dir() else path


def plot_metrics(runs: str | os.PathLike | Mapping[str, str | os.PathLike],
                 out_dir: str | os.PathLike | None = None, prefix: str = "curves_",
                 groups: Iterable[str] | None = None) -> dict[str, Path]:
    """Writes `<out_dir>/<prefix><group>.png` for each group of metrics of one or more runs.

    Args:
      runs: a `metrics.csv` or the run directory holding it; or run label -> such a path, to
        draw several runs on the same axes (e.g. {"FSQ": ..., "VQ": ...}).
      out_dir: where the PNGs go (default: the directory of the (first) CSV).
      prefix: file-name prefix of the PNGs.
      groups: the groups to draw (default: every group with a metric; see GROUP_TITLES).

    Returns:
      group -> PNG path, for the groups that have at least one metric.
    """
    paths = {"": _csv(runs)} if isinstance(runs, str | os.PathLike) else {
        label: _csv(path) for label, path in runs.items()}
    if not paths:
        raise ValueError("plot_metrics: no run given")
    wanted = list(GROUP_TITLES) if groups is None else list(groups)
    unknown = sorted(set(wanted) - set(GROUP_TITLES))
    if unknown:
        raise ValueError(f"unknown metric groups {unknown}; known: {list(GROUP_TITLES)}")
    curves = {label: read_metrics(path) for label, path in paths.items()}
    out = Path(out_dir) if out_dir is not None else next(iter(paths.values())).parent
    written = {}
    for group in wanted:
        selected = {label: {name: curve for name, curve in run.items() if group_of(name) == group}
                    for label, run in curves.items()}
        if any(selected.values()):
            written[group] = plot_group(selected, out / f"{prefix}{group}.png",
                                        GROUP_TITLES[group])
    return written
