"""scripts/train.py and scripts/evaluate.py as a user runs them: SIGTERM, kill -9, bad flags."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from training_processes import read_until

from fsq_jax import train

ROOT = Path(__file__).resolve().parents[1]
CONFIG = f"{ROOT / 'configs' / 'autoencoder.py'}:fsq,tiny"


def command(script, workdir, *overrides):
    return [
        sys.executable,
        str(ROOT / "scripts" / script),
        f"--config={CONFIG}",
        f"--workdir={workdir}",
        *overrides,
    ]


def environment(cache_dir=None, devices=1):
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )
    if cache_dir is not None:
        env.update(
            JAX_COMPILATION_CACHE_DIR=str(cache_dir),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    return env


def start(workdir, *overrides, cache_dir=None, devices=1):
    return subprocess.Popen(
        command("train.py", workdir, *overrides),
        cwd=ROOT,
        env=environment(cache_dir, devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_step(process, step, timeout=300):
    """Reads the progress lines until `step N/` appears; returns everything read."""
    return read_until(process, lambda line: line.startswith(f"step {step}/"), timeout)


def wait_for_committed_checkpoint(workdir, process, timeout=300):
    """Waits until orbax has committed some step (renamed its temporary directory to the bare
    step number). Saves are asynchronous: a kill while the first save is still in flight
    rightly restarts from step 0, and there would be nothing to resume from."""
    directory = Path(workdir) / "checkpoints"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if directory.is_dir() and any(p.name.isdigit() and p.is_dir()
                                      for p in directory.iterdir()):
            return
        if process.poll() is not None:
            raise AssertionError("the run ended before any checkpoint was committed")
        time.sleep(0.02)
    process.kill()
    raise AssertionError(f"no checkpoint committed within {timeout} s")


def final_params(workdir):
    _, tree = train.restore_latest(str(workdir))
    return tree


LONG_RUN = (
    "--config.total_steps=100000",
    "--config.log_every=1",
    "--config.eval_every=0",
    "--config.images_every=0",
    "--config.checkpoint_every=0",
)


def test_sigterm_checkpoints_and_exits_zero(tmp_path):
    process = start(tmp_path, *LONG_RUN, "--config.eval_steps=1")
    wait_for_step(process, 3)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    elapsed = time.monotonic() - sent
    assert process.returncode == 0, output[-3000:]
    assert elapsed < 60, f"took {elapsed:.1f}s to stop"
    tree = final_params(tmp_path)
    step = int(tree["step"])
    assert step >= 3
    assert os.listdir(tmp_path / "checkpoints") == [str(step)]
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(tree["params"]))
    assert not (tmp_path / "results.json").exists()  # training did not finish


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "--config.unknown=1",
            "config error: --config.unknown=1: the config has no field 'unknown'",
        ),
        ("--config.nan_policy=sometimes", "config.nan_policy = 'sometimes': must be one of"),
        ("--config.quantizer.levels=(1,5)", "config.quantizer"),
        ("--config.data.image_size=18", "config.data.image_size = 18: must be divisible by 4"),
    ],
)
def test_bad_overrides_fail_with_one_line(tmp_path, override, expected):
    result = subprocess.run(
        command("train.py", tmp_path, override),
        cwd=ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert expected in last, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoints").exists()  # failed before any training


@pytest.mark.slow
def test_kill_minus_9_then_restart_is_bit_identical(tmp_path):
    cache = tmp_path / "jax_cache"
    run = (
        "--config.total_steps=24",
        "--config.log_every=1",
        "--config.checkpoint_every=4",
        "--config.eval_every=12",
        "--config.images_every=0",
    )
    reference = start(tmp_path / "reference", *run, cache_dir=cache, devices=2)
    output, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, output[-3000:]

    kill_at = random.Random().randint(5, 22)
    victim = start(tmp_path / "killed", *run, cache_dir=cache, devices=2)
    wait_for_step(victim, kill_at)
    wait_for_committed_checkpoint(tmp_path / "killed", victim)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    resumed = start(tmp_path / "killed", *run, cache_dir=cache, devices=2)
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output[-3000:]
    assert "resumed from the checkpoint at step" in output, f"kill at {kill_at}"
    a, b = final_params(tmp_path / "reference"), final_params(tmp_path / "killed")
    for name in ("params", "opt_state", "model_state"):
        for x, y in zip(jax.tree.leaves(a[name]), jax.tree.leaves(b[name])):
            np.testing.assert_array_equal(x, y, err_msg=f"{name}, killed at step {kill_at}")


@pytest.mark.slow
def test_evaluate_script_reads_the_runs_config_and_writes_only_where_asked(tmp_path):
    run = ("--config.total_steps=4", "--config.checkpoint_every=4")
    process = start(tmp_path, *run)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    training_results = (tmp_path / "results.json").read_text()
    result = subprocess.run(  # no --config: the run's own config.json, overrides included
        [sys.executable, str(ROOT / "scripts" / "evaluate.py"), f"--workdir={tmp_path}",
         f"--out={tmp_path / 'evaluation.json'}"],
        cwd=ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stored = json.loads((tmp_path / "evaluation.json").read_text())
    assert stored["step"] == 4 and np.isfinite(stored["eval"]["eval/mse"])
    assert (tmp_path / "results.json").read_text() == training_results  # left alone
