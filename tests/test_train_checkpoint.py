"""Checkpointer: keep-n, manifests, corruption detection and fallback, typed restore."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fsq_jax.train import Checkpointer, CheckpointError, TrainState


def make_state(value):
    params = {"net": {"w": jnp.full((64, 32), value, jnp.float32), "b": jnp.zeros((32,))}}
    return TrainState.create(params, {"net": optax.adam(1e-3)}, ema_decay=0.5).replace(
        step=jnp.asarray(int(value), jnp.int32)
    )


def save_steps(directory, steps, keep=3):
    checkpointer = Checkpointer(str(directory), keep=keep)
    for step in steps:
        assert checkpointer.save(step, make_state(step), extra={"skipped_updates": step})
    checkpointer.close()


def largest_file(step_dir):
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.name != "fsq_manifest.json"]
    return max(files, key=lambda p: p.stat().st_size)


def test_keeps_n_and_writes_manifests(tmp_path):
    save_steps(tmp_path, [1, 2, 3, 4], keep=2)
    checkpointer = Checkpointer(str(tmp_path), keep=2)
    assert checkpointer.all_steps() == [3, 4]
    manifest = json.loads((tmp_path / "4" / "fsq_manifest.json").read_text())
    assert manifest["step"] == 4 and manifest["extra"] == {"skipped_updates": 4}
    assert manifest["files"]
    assert checkpointer.save(4, make_state(4)) is False  # never overwrites a committed step
    step, tree = checkpointer.restore_latest()
    checkpointer.close()
    assert step == 4 and checkpointer.restored_extra == {"skipped_updates": 4}
    np.testing.assert_array_equal(tree["params"]["net"]["w"], 4.0)


def test_typed_restore_keeps_optimisers_and_shardings(tmp_path):
    save_steps(tmp_path, [5])
    target = jax.eval_shape(lambda: make_state(0.0))
    step, state = Checkpointer(str(tmp_path)).restore_latest(target=target)
    assert step == 5 and isinstance(state, TrainState) and state.tx is target.tx
    assert isinstance(state.params["net"]["w"], jax.Array)
    np.testing.assert_array_equal(state.ema_params["net"]["w"], 5.0)


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "delete_file"])
def test_damaged_latest_step_is_reported_and_skipped(tmp_path, damage):
    save_steps(tmp_path / "checkpoints", [1, 2])
    victim = largest_file(tmp_path / "checkpoints" / "2")
    data = bytearray(victim.read_bytes())
    if damage == "truncate":
        victim.write_bytes(data[:-7])
    elif damage == "flip_byte":
        data[len(data) // 3] ^= 0x01
        victim.write_bytes(bytes(data))
    else:
        victim.unlink()
    reports = []
    checkpointer = Checkpointer(str(tmp_path / "checkpoints"))
    step, tree = checkpointer.restore_latest(report=reports.append)
    assert step == 1
    np.testing.assert_array_equal(tree["params"]["net"]["w"], 1.0)
    assert len(reports) == 1 and reports[0].startswith("checkpoint at step 2 is unusable")
    assert victim.name in reports[0]
    assert checkpointer.all_steps() == [1]
    (aside,) = os.listdir(tmp_path / "checkpoints_corrupt")
    assert aside.startswith("2-")
    # The next save at step 2 writes a fresh checkpoint instead of colliding with the bad one.
    assert checkpointer.save(2, make_state(2))
    checkpointer.close()


def test_step_without_manifest_is_judged_by_reading_it(tmp_path):
    save_steps(tmp_path, [1, 2])
    (tmp_path / "2" / "fsq_manifest.json").unlink()  # as if killed right after the commit
    victim = largest_file(tmp_path / "2")
    victim.write_bytes(victim.read_bytes()[:10])
    reports = []
    step, _ = Checkpointer(str(tmp_path)).restore_latest(report=reports.append)
    assert step == 1 and "step 2" in reports[0]


def test_all_checkpoints_bad_raises_with_every_step(tmp_path):
    save_steps(tmp_path / "checkpoints", [1, 2])
    for step in (1, 2):
        victim = largest_file(tmp_path / "checkpoints" / str(step))
        victim.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"step 2 is unusable.*step 1 is unusable"):
        Checkpointer(str(tmp_path / "checkpoints")).restore_latest(report=lambda _: None)


def test_empty_directory_restores_nothing(tmp_path):
    assert Checkpointer(str(tmp_path)).restore_latest() is None


def test_state_of_another_config_is_an_error_not_corruption(tmp_path):
    save_steps(tmp_path, [1])
    other = jax.eval_shape(
        lambda: TrainState.create(
            {"net": {"w": jnp.zeros((64, 16)), "b": jnp.zeros((16,))}}, {"net": optax.adam(1e-3)}
        )
    )
    with pytest.raises(CheckpointError, match=r"step 1 .* does not fit this run's state"):
        Checkpointer(str(tmp_path)).restore_latest(target=other)
    assert Checkpointer(str(tmp_path)).all_steps() == [1]  # nothing moved aside
