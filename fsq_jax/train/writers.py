"""Metric writers: TensorBoard events (clu), a `metrics.csv` readable without TensorBoard, PNGs.

The CSV has one row per logged step and one column per metric; a resumed run first drops the rows
its predecessor wrote after the restored step, so the file never holds two histories.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from clu import metric_writers
from PIL import Image


class CsvWriter(metric_writers.MetricWriter):
    """Writes scalars to a CSV file, one row per step (scalars of one step are merged)."""

    def __init__(self, path: str, resume_step: int | None = None):
        self._path = path
        self._columns: list[str] = []
        self._row_step: int | None = None
        self._row: dict[str, Any] = {}
        if os.path.exists(path):
            self._truncate_after(resume_step)

    def _read(self) -> tuple[list[str], list[dict[str, str]]]:
        with open(self._path, newline="") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)

    def _rewrite(self, columns: list[str], rows: list[Mapping[str, Any]]) -> None:
        tmp = self._path + ".tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self._path)

    def _truncate_after(self, step: int | None) -> None:
        columns, rows = self._read()
        if not columns or columns[0] != "step":
            columns, rows = ["step"], []
        keep = [r for r in rows if step is not None and int(float(r["step"])) <= step]
        self._columns = columns
        self._rewrite(columns, keep)

    def _flush_row(self) -> None:
        if self._row_step is None:
            return
        new = [k for k in sorted(self._row) if k not in self._columns]
        row = {"step": self._row_step, **self._row}
        if new or not os.path.exists(self._path):
            rows = self._read()[1] if os.path.exists(self._path) else []
            self._columns = ["step", *[c for c in self._columns if c != "step"], *new]
            self._rewrite(self._columns, [*rows, row])
        else:
            with open(self._path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self._columns, extrasaction="ignore").writerow(row)
        self._row_step, self._row = None, {}

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        if self._row_step is not None and step != self._row_step:
            self._flush_row()
        self._row_step = int(step)
        self._row.update({k: float(np.asarray(v)) for k, v in scalars.items()})

    def write_summaries(self, step, values, metadata=None) -> None:
        scalars = {k: v for k, v in values.items() if np.asarray(v).ndim == 0}
        if scalars:
            self.write_scalars(step, scalars)

    def write_images(self, step, images) -> None:
        pass

    def write_videos(self, step, videos) -> None:
        pass

    def write_audios(self, step, audios, *, sample_rate) -> None:
        pass

    def write_texts(self, step, texts) -> None:
        pass

    def write_histograms(self, step, arrays, num_buckets=None) -> None:
        pass

    def write_hparams(self, hparams) -> None:
        pass

    def flush(self) -> None:
        self._flush_row()

    def close(self) -> None:
        self._flush_row()


def _to_uint8_image(name: str, image: Any) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"image {name!r} must be [H, W, 3] (or 1 / 4 channels), got shape {image.shape}"
        )
    if image.dtype != np.uint8:
        raise ValueError(f"image {name!r} must be uint8, got {image.dtype}")
    return image


def write_pngs(directory: str, step: int, images: Mapping[str, Any]) -> list[str]:
    """Writes each `[H, W, C]` uint8 image as `directory/{name}_{step:08d}.png`."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for name, image in images.items():
        image = _to_uint8_image(name, image)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        path = os.path.join(directory, f"{safe}_{step:08d}.png")
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, "PNG")
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(buffer.getvalue())
        os.replace(tmp, path)
        paths.append(path)
    return paths


def create_writer(
    workdir: str, resume_step: int | None, is_chief: bool
) -> metric_writers.MetricWriter:
    """TensorBoard + log writer (clu) and `workdir/metrics.csv`; non-chief processes only log."""
    if not is_chief:
        return metric_writers.create_default_writer(workdir, just_logging=True)
    default = metric_writers.create_default_writer(workdir, asynchronous=False)
    csv_writer = CsvWriter(os.path.join(workdir, "metrics.csv"), resume_step)
    return metric_writers.MultiWriter([default, csv_writer])
