"""Soak: thousands of steps with periodic checkpoints and evaluation; memory must stay flat."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = f"{ROOT / 'configs' / 'autoencoder.py'}:fsq,tiny"
TOTAL_STEPS = 3000


@pytest.mark.slow
def test_long_run_memory_stays_flat(tmp_path):
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONUNBUFFERED="1",
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
    )
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "scripts" / "train.py"),
            f"--config={CONFIG}",
            f"--workdir={tmp_path}",
            f"--config.total_steps={TOTAL_STEPS}",
            "--config.log_every=50",
            "--config.eval_every=250",
            "--config.checkpoint_every=250",
            "--config.images_every=1000",
            "--config.keep_checkpoints=2",
            "--config.eval_steps=2",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    monitor = psutil.Process(process.pid)
    rss = {}  # step -> resident set size in MiB when that progress line was printed
    for line in process.stdout:
        if line.startswith("step "):
            step = int(line.split()[1].split("/")[0])
            rss[step] = monitor.memory_info().rss / 2**20
    assert process.wait(timeout=60) == 0
    assert max(rss) == TOTAL_STEPS
    early = max(v for s, v in rss.items() if 0.2 * TOTAL_STEPS <= s <= 0.4 * TOTAL_STEPS)
    late = max(v for s, v in rss.items() if s >= 0.8 * TOTAL_STEPS)
    print(
        f"\nsoak RSS: first line {rss[min(rss)]:.0f} MiB, peak at 20-40% {early:.0f} MiB, "
        f"peak at 80-100% {late:.0f} MiB, end {rss[TOTAL_STEPS]:.0f} MiB"
    )
    # Flat: after warm-up, the late peak may exceed the early peak by at most 5% + 40 MiB.
    assert late <= early * 1.05 + 40, rss
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2750", "3000"]
