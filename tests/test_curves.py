"""Training curves from metrics.csv (fsq_jax.reporting.curves, scripts/plot_metrics.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fsq_jax.reporting import curves

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# As fsq_jax.train.writers.CsvWriter writes it: a column per metric, empty where not logged.
CSV = """\
step,skipped_updates,steps_per_sec,train/grad_norm/generator,train/loss,codebook/usage,eval/psnr
10,0.0,5.0,0.5,1.0,,
20,0.0,6.0,0.25,0.5,,
30,0.0,6.5,0.125,0.25,0.5,20.5
"""


def _write(tmp_path, text=CSV, name="run"):
    run = tmp_path / name
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text(text)
    return run


def test_read_metrics_skips_empty_cells(tmp_path):
    metrics = curves.read_metrics(_write(tmp_path) / "metrics.csv")
    steps, values = metrics["train/loss"]
    np.testing.assert_array_equal(steps, [10, 20, 30])
    np.testing.assert_array_equal(values, [1.0, 0.5, 0.25])
    steps, values = metrics["codebook/usage"]
    np.testing.assert_array_equal(steps, [30])
    np.testing.assert_array_equal(values, [0.5])


@pytest.mark.parametrize("column, group", [
    ("train/loss", "train"), ("train/grad_norm/generator", "optimizer"),
    ("param_norm/model", "optimizer"), ("eval/psnr", "eval"), ("sampling/fid", "evaluators"),
    ("codebook/usage", "evaluators"), ("steps_per_sec", "speed"), ("skipped_updates", "speed")])
def test_metrics_are_grouped_by_what_they_are(column, group):
    assert curves.group_of(column) == group


def test_plot_metrics_writes_one_png_per_group(tmp_path):
    run = _write(tmp_path)
    written = curves.plot_metrics(run)
    assert list(written) == ["train", "eval", "evaluators", "optimizer", "speed"]
    assert written["train"] == run / "curves_train.png"
    for path in written.values():
        width, height = Image.open(path).size
        assert width > 200 and height > 150
    # Only the groups asked for; two runs on the same axes.
    other = _write(tmp_path, name="other")
    both = curves.plot_metrics({"FSQ": run, "VQ": other}, tmp_path / "out", prefix="x_",
                               groups=["train"])
    assert both == {"train": tmp_path / "out" / "x_train.png"}


def test_bad_csv_names_the_line(tmp_path):
    run = _write(tmp_path, "step,train/loss\n1,0.5\n2,oops\n")
    with pytest.raises(ValueError, match=r"metrics.csv, line 3"):
        curves.read_metrics(run / "metrics.csv")
    with pytest.raises(ValueError, match="no 'step' column"):
        curves.read_metrics(_write(tmp_path, "a,b\n1,2\n", name="x") / "metrics.csv")
    with pytest.raises(ValueError, match="unknown metric groups"):
        curves.plot_metrics(run, groups=["losses"])


def test_plot_metrics_script(tmp_path):
    _write(tmp_path / "runs", name="a")
    _write(tmp_path / "runs", name="b")
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "plot_metrics.py"),
                           "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "png")],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / "png" / "a")) == sorted(
        f"curves_{g}.png" for g in ("train", "eval", "evaluators", "optimizer", "speed"))
    assert (tmp_path / "png" / "b" / "curves_train.png").is_file()
    missing = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "plot_metrics.py"),
                              "--runs", str(tmp_path / "nowhere")],
                             capture_output=True, text=True, cwd=REPO)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == (
        f"error: {str(tmp_path / 'nowhere')!r} is neither a metrics.csv nor a directory")
