"""UViM dense tasks (depth, colorization, panoptic) and the two training stages built on them.

`config.task = "uvim.tasks:Stage1Task"` (or `Stage2Task`) runs a stage on the shared loop;
`config.dense_task.name` picks the dense task.
"""

from __future__ import annotations

import ml_collections

from uvim.tasks.base import DenseTask, Metric
from uvim.tasks.colorization import ColorizationTask
from uvim.tasks.depth import DepthTask
from uvim.tasks.panoptic import PanopticTask

DENSE_TASKS: dict[str, type[DenseTask]] = {
    "depth": DepthTask,
    "colorization": ColorizationTask,
    "panoptic": PanopticTask,
}


def build_dense_task(config: ml_collections.ConfigDict) -> DenseTask:
    """The dense task named by `config.name` (one of DENSE_TASKS)."""
    name = config.get("name", None)
    if name not in DENSE_TASKS:
        raise ValueError(f"dense_task.name must be one of {sorted(DENSE_TASKS)}, got {name!r}")
    return DENSE_TASKS[name](config)


# Imported last: the stage tasks build on the dense tasks above.
from uvim.train_tasks import Stage1Task, Stage2Task  # noqa: E402

__all__ = [
    "DENSE_TASKS",
    "ColorizationTask",
    "DenseTask",
    "DepthTask",
    "Metric",
    "PanopticTask",
    "Stage1Task",
    "Stage2Task",
    "build_dense_task",
]
