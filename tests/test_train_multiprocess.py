"""Two processes on localhost (jax.distributed, gloo CPU collectives) train like one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from fsq_jax import train

ROOT = Path(__file__).resolve().parents[1]
CONFIG = f"{ROOT / 'configs' / 'autoencoder.py'}:fsq,tiny"
RUN = (
    "--config.total_steps=6",
    "--config.log_every=1",
    "--config.checkpoint_every=3",
    "--config.eval_every=6",
    "--config.images_every=6",
)


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(workdir, devices_per_process, *extra):
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONUNBUFFERED="1",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
    )
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "scripts" / "train.py"),
            f"--config={CONFIG}",
            f"--workdir={workdir}",
            *RUN,
            *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process):
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output[-4000:]
    return output


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    single = launch(tmp_path / "single", 4)
    finish(single)
    port = free_port()
    workers = [
        launch(
            tmp_path / "multi",
            2,
            f"--coordinator_address=localhost:{port}",
            "--num_processes=2",
            f"--process_id={index}",
            "--cpu_collectives=gloo",
        )
        for index in range(2)
    ]
    outputs = [finish(worker) for worker in workers]
    assert "on 4 devices (2 processes)" in outputs[0]

    one = json.loads((tmp_path / "single" / "results.json").read_text())
    two = json.loads((tmp_path / "multi" / "results.json").read_text())
    assert two["train"]["train/loss"] == pytest.approx(one["train"]["train/loss"], rel=1e-5)
    assert two["eval"]["eval/mse"] == pytest.approx(one["eval"]["eval/mse"], rel=1e-5)
    # Collective checkpoints: one set of files, restorable in a single process.
    assert sorted(os.listdir(tmp_path / "multi" / "checkpoints")) == ["3", "6"]
    _, a = train.restore_latest(str(tmp_path / "single"))
    _, b = train.restore_latest(str(tmp_path / "multi"))
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
