"""Checkpointer: keep-n, manifests, corruption detection and fallback, typed restore."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fsq_jax.train import (
    Checkpointer,
    CheckpointError,
    CheckpointReader,
    CheckpointSaveError,
    TrainState,
    error_line,
    integrity,
)
from fsq_jax.train.checkpoint import CORRUPT_DIR


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


def test_step_without_integrity_record_gives_way_to_a_verified_one(tmp_path):
    save_steps(tmp_path / "checkpoints", [1, 2])
    (tmp_path / "checkpoints" / "2" / "fsq_manifest.json").unlink()  # lost: cannot be verified
    reports = []
    checkpointer = Checkpointer(str(tmp_path / "checkpoints"))
    step, _ = checkpointer.restore_latest(report=reports.append)
    checkpointer.close()
    assert step == 1
    assert len(reports) == 1
    assert re.match(r"checkpoint at step 2 is unusable: .*integrity", reports[0])
    assert os.listdir(tmp_path / CORRUPT_DIR)[0].startswith("2-")  # a new step 2 can be saved


def test_unverifiable_steps_are_the_last_resort(tmp_path):
    """A workdir written before integrity records existed still resumes (with a warning), from
    the newest step that reads; one that does not read is unusable."""
    directory = tmp_path / "checkpoints"
    save_steps(directory, [1, 2])
    for step in (1, 2):
        (directory / str(step) / "fsq_manifest.json").unlink()
    victim = largest_file(directory / "2")
    victim.write_bytes(victim.read_bytes()[:10])
    reports = []
    step, tree = Checkpointer(str(directory)).restore_latest(report=reports.append)
    assert step == 1
    np.testing.assert_array_equal(tree["params"]["net"]["w"], 1.0)
    assert "step 2 is unusable" in reports[0]
    assert re.match(r"checkpoint at step 1 has no integrity record .* no verified step", reports[1])


def test_all_checkpoints_bad_refuses_in_one_line_now_and_on_every_rerun(tmp_path):
    save_steps(tmp_path / "checkpoints", [1, 2])
    for step in (1, 2):
        victim = largest_file(tmp_path / "checkpoints" / str(step))
        victim.write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        Checkpointer(str(tmp_path / "checkpoints")).restore_latest(report=lambda _: None)
    message = str(info.value)
    assert "\n" not in message
    assert re.search(r"step 2: file \S+ has 0 bytes.*step 1: file \S+ has 0 bytes", message)
    assert "refusing to start again from step 0" in message and CORRUPT_DIR in message
    assert sorted(p.split("-")[0] for p in os.listdir(tmp_path / CORRUPT_DIR)) == ["1", "2"]
    # The rerun finds no step at all, but the history set aside: it refuses again instead of
    # silently starting from step 0 (a requeueing scheduler would hide the first message).
    with pytest.raises(CheckpointError, match=r"holds step\(s\) 2, 1 set aside .* delete "):
        Checkpointer(str(tmp_path / "checkpoints")).restore_latest()
    # A read-only reader says the same without touching anything.
    with pytest.raises(CheckpointError, match="nothing was moved or changed"):
        CheckpointReader(str(tmp_path / "checkpoints")).restore_latest()


def test_empty_directory_restores_nothing(tmp_path):
    assert Checkpointer(str(tmp_path / "checkpoints")).restore_latest() is None
    assert CheckpointReader(str(tmp_path / "absent")).restore_latest() is None


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
    (tmp_path / "1" / "fsq_manifest.json").unlink()  # an unverifiable step: the same verdict
    with pytest.raises(CheckpointError, match=r"step 1: no integrity record, and it does not "
                                              r"fit this run's state .* Use a new workdir"):
        Checkpointer(str(tmp_path)).restore_latest(target=other)
    assert Checkpointer(str(tmp_path)).all_steps() == [1]


def commit_without_close(directory, steps):
    """Saves `steps` and waits for orbax's commit, but never lets the Checkpointer finish:
    the state a killed run leaves behind."""
    checkpointer = Checkpointer(str(directory))
    for step in steps:
        checkpointer.save(step, make_state(step), extra={"skipped_updates": step})
    checkpointer.manager.wait_until_finished()
    return checkpointer


def flip_one_bit(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_integrity_record_is_part_of_the_commit(tmp_path):
    """The newest step of a run killed right after orbax committed it already has its record,
    so a flipped bit in it is caught (it used to be restored unchecked)."""
    commit_without_close(tmp_path, [1, 2])
    for step in (1, 2):
        record = json.loads((tmp_path / str(step) / "fsq_manifest.json").read_text())
        assert record["step"] == step and record["extra"] == {"skipped_updates": step}
        assert any(name.startswith("default/") for name in record["files"])
    flip_one_bit(largest_file(tmp_path / "2"))
    reports = []
    step, tree = CheckpointReader(str(tmp_path)).restore_latest(report=reports.append)
    assert step == 1 and "fails its CRC32 check" in reports[0]
    np.testing.assert_array_equal(tree["params"]["net"]["w"], 1.0)


def test_lost_metadata_and_record_fall_back_instead_of_claiming_a_config_change(tmp_path):
    directory = tmp_path / "checkpoints"
    save_steps(directory, [1, 2])
    for name in ("fsq_manifest.json", "_CHECKPOINT_METADATA", "default/_METADATA"):
        (directory / "2" / name).unlink()
    target = jax.eval_shape(lambda: make_state(0.0))
    reports = []
    step, state = Checkpointer(str(directory)).restore_latest(
        target=target, report=reports.append
    )
    assert step == 1 and int(state.step) == 1
    assert "step 2 is unusable" in reports[0]


def test_read_error_skips_the_step_without_moving_it(tmp_path, monkeypatch):
    """A step that cannot be read (permissions, NFS) may be fine: it is left in place, the
    previous step is used; when nothing can be read, one line names the path and errno."""
    save_steps(tmp_path / "checkpoints", [1, 2])
    real_crc = integrity._file_crc32

    def denied(path, steps=("2",)):
        if os.path.relpath(path, tmp_path / "checkpoints").split(os.sep)[0] in steps:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_crc(path)

    monkeypatch.setattr(integrity, "_file_crc32", denied)
    reports = []
    checkpointer = Checkpointer(str(tmp_path / "checkpoints"))
    step, _ = checkpointer.restore_latest(report=reports.append)
    assert step == 1 and checkpointer.all_steps() == [1, 2]
    checkpointer.close()
    assert re.match(r"checkpoint at step 2 cannot be read: cannot read \S+/2/\S+: Permission "
                    r"denied \(errno 13\); left in place", reports[0])
    assert not (tmp_path / CORRUPT_DIR).exists()
    monkeypatch.setattr(integrity, "_file_crc32", lambda path: denied(path, ("1", "2")))
    with pytest.raises(CheckpointError) as info:
        Checkpointer(str(tmp_path / "checkpoints")).restore_latest(report=lambda _: None)
    assert "\n" not in str(info.value) and "errno 13" in str(info.value)
    assert str(info.value).endswith("fix the access to those files (permissions, mount) and rerun")
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]


def test_corrupt_step_that_cannot_be_moved_aside_still_falls_back(tmp_path, monkeypatch):
    save_steps(tmp_path / "checkpoints", [1, 2])
    flip_one_bit(largest_file(tmp_path / "checkpoints" / "2"))

    def refuse(source, destination):
        raise PermissionError(errno.EACCES, "Permission denied", source)

    monkeypatch.setattr(os, "rename", refuse)
    reports = []
    checkpointer = Checkpointer(str(tmp_path / "checkpoints"))
    step, _ = checkpointer.restore_latest(report=reports.append)
    checkpointer.close()
    assert step == 1
    assert re.match(r"checkpoint at step 2 is unusable: .* could not move it aside "
                    r"\(Permission denied\), left in place; falling back", reports[0])


def permissions_enforced(tmp_path):
    probe = tmp_path / "probe"
    probe.write_text("x")
    probe.chmod(0)
    try:
        probe.read_text()
        return False
    except PermissionError:
        return True
    finally:
        probe.unlink()


def test_permission_denied_step_directory_is_skipped_in_place(tmp_path):
    if not permissions_enforced(tmp_path):
        pytest.skip("file permissions are not enforced for this user (root); the monkeypatched "
                    "test above covers the read error")
    save_steps(tmp_path / "checkpoints", [1, 2])
    step_dir = tmp_path / "checkpoints" / "2"
    step_dir.chmod(0)
    try:
        reports = []
        checkpointer = Checkpointer(str(tmp_path / "checkpoints"))
        step, _ = checkpointer.restore_latest(report=reports.append)
        checkpointer.close()
        assert step == 1 and "cannot be read" in reports[0] and "errno 13" in reports[0]
        assert step_dir.is_dir() and not (tmp_path / CORRUPT_DIR).exists()
        # A corrupt step in a directory this user cannot change: reported, the older one used.
        step_dir.chmod(0o755)
        flip_one_bit(largest_file(step_dir))
        (tmp_path / "checkpoints").chmod(0o555)
        reports = []
        step, _ = CheckpointReader(str(tmp_path / "checkpoints")).restore_latest(
            report=reports.append
        )
        assert step == 1 and "fails its CRC32 check" in reports[0]
        checkpointer = Checkpointer(str(tmp_path / "checkpoints"))
        step, _ = checkpointer.restore_latest(report=reports.append)
        checkpointer.close()
        assert step == 1 and "could not move it aside (Permission denied)" in reports[1]
        checkpointer = Checkpointer(str(tmp_path / "checkpoints"))
        with pytest.raises(CheckpointSaveError, match=r"^permission denied while saving step 3"):
            checkpointer.save(3, make_state(3))
        checkpointer.close()
    finally:
        (tmp_path / "checkpoints").chmod(0o755)
        step_dir.chmod(0o755)


def listing(root):
    """Every path under `root` with its size and mtime (what 'unchanged' means here)."""
    entries = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        entries[str(path.relative_to(root))] = (path.is_dir(), stat.st_size, stat.st_mtime_ns)
    return entries


def test_reader_changes_nothing_even_with_a_corrupt_step(tmp_path):
    save_steps(tmp_path / "checkpoints", [1, 2, 3])
    flip_one_bit(largest_file(tmp_path / "checkpoints" / "3"))
    (tmp_path / "checkpoints" / "2" / "fsq_manifest.json").unlink()
    before = listing(tmp_path)
    reports = []
    reader = CheckpointReader(str(tmp_path / "checkpoints"))
    step, tree = reader.restore_latest(report=reports.append)
    target = jax.eval_shape(lambda: make_state(0.0))
    typed_step, _ = reader.restore_latest(target=target, report=reports.append)
    reader.close()
    assert step == typed_step == 1
    np.testing.assert_array_equal(tree["params"]["net"]["w"], 1.0)
    assert "step 3 is unusable" in reports[0] and "left in place" in reports[0]
    assert listing(tmp_path) == before


def test_reader_sees_steps_committed_after_it_opened(tmp_path):
    save_steps(tmp_path, [1])
    reader = CheckpointReader(str(tmp_path))
    assert reader.restore_latest()[0] == 1
    save_steps(tmp_path, [2])  # a live run commits another step
    step, tree = reader.restore_latest()
    reader.close()
    assert step == 2
    np.testing.assert_array_equal(tree["params"]["net"]["w"], 2.0)


def test_reader_tolerates_a_step_deleted_under_it(tmp_path, monkeypatch):
    """A live training run deletes old steps (keep-n) while a tool reads: the vanished step is
    skipped, not called corrupt, and the reader moves on to the next."""
    save_steps(tmp_path, [1, 2])
    real_crc = integrity._file_crc32

    def crc_while_gc(path):
        if os.path.relpath(path, tmp_path).startswith("2" + os.sep):
            shutil.rmtree(tmp_path / "2", ignore_errors=True)
        return real_crc(path)

    monkeypatch.setattr(integrity, "_file_crc32", crc_while_gc)
    before = {k: v for k, v in listing(tmp_path).items() if not k.startswith("2")}
    reports = []
    step, _ = CheckpointReader(str(tmp_path)).restore_latest(report=reports.append)
    assert step == 1
    assert reports == ["checkpoint at step 2 was deleted while being read; falling back"]
    assert listing(tmp_path) == before


def test_reader_picks_up_a_step_deleted_during_the_orbax_read(tmp_path, monkeypatch):
    save_steps(tmp_path, [1, 2])
    real_restore = CheckpointReader._restore_step

    def restore_while_gc(self, step, target):
        if step == 2:
            shutil.rmtree(tmp_path / "2")
        return real_restore(self, step, target)

    monkeypatch.setattr(CheckpointReader, "_restore_step", restore_while_gc)
    reports = []
    step, _ = CheckpointReader(str(tmp_path)).restore_latest(report=reports.append)
    assert step == 1 and "deleted while being read" in reports[0]


@pytest.mark.parametrize("async_save", [True, False])
def test_disk_full_while_saving_is_one_line_and_keeps_the_last_step(
    tmp_path, monkeypatch, caplog, async_save
):
    save_steps(tmp_path / "checkpoints", [1])
    real_write = integrity.write_record

    def full(step_dir, step, extra):
        if step == 2:
            raise OSError(errno.ENOSPC, "No space left on device", step_dir)
        real_write(step_dir, step, extra)

    monkeypatch.setattr(integrity, "write_record", full)
    checkpointer = Checkpointer(str(tmp_path / "checkpoints"), async_save=async_save)
    with pytest.raises(CheckpointSaveError) as info:
        checkpointer.save(2, make_state(2))
        checkpointer.wait()
    checkpointer.close()
    expected = (
        f"no space left on device while saving step 2 to {tmp_path / 'checkpoints' / '2'}; "
        "free space and rerun: the last good step 1 is intact"
    )
    assert str(info.value) == expected
    assert os.listdir(tmp_path / "checkpoints") == ["1"]  # the failed save's files are freed
    assert not any(r.exc_info for r in caplog.records if "orbax" in r.pathname)
    step, _ = CheckpointReader(str(tmp_path / "checkpoints")).restore_latest()
    assert step == 1


def test_permission_denied_while_saving_is_one_line_at_once(tmp_path, monkeypatch):
    """orbax creates the step directory in a background thread; when that fails its other
    threads wait minutes for it. The save fails up front instead, in one line."""
    save_steps(tmp_path / "checkpoints", [1])
    real_mkdir = os.mkdir

    def read_only_mkdir(path, *args, **kwargs):
        if os.path.dirname(path) == str(tmp_path / "checkpoints"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only_mkdir)
    checkpointer = Checkpointer(str(tmp_path / "checkpoints"))
    started = time.monotonic()
    with pytest.raises(CheckpointSaveError) as info:
        checkpointer.save(2, make_state(2))
    checkpointer.close()
    assert time.monotonic() - started < 30
    assert str(info.value) == (
        f"permission denied while saving step 2 to {tmp_path / 'checkpoints' / '2'}; make "
        f"{tmp_path / 'checkpoints'} writable and rerun: the last good step 1 is intact"
    )
    assert os.listdir(tmp_path / "checkpoints") == ["1"]


def test_error_line_prefers_the_checkpoint_that_could_not_be_saved():
    """Closing a run after a failed save may fail on the same full disk (metrics.csv): the line
    still says which checkpoint was lost."""
    try:
        try:
            raise CheckpointSaveError("no space left on device while saving step 4 to /w/4")
        finally:
            raise OSError(errno.ENOSPC, "No space left on device", "/w/metrics.csv.tmp")
    except OSError as e:
        assert error_line(e) == "no space left on device while saving step 4 to /w/4"
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "/w/config.json")
    assert error_line(missing) == (
        "storage error: No such file or directory: /w/config.json (FileNotFoundError, errno 2)"
    )
    assert error_line(ValueError("a bug")) is None


def _tmpfs_or_skip(path, size):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")


# orbax's tensorstore callback may fire after its event loop closed once a write failed.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_disk_full_on_a_real_small_filesystem(tmp_path, caplog):
    mount = tmp_path / "small"
    _tmpfs_or_skip(mount, "256k")
    try:
        checkpointer = Checkpointer(str(mount / "checkpoints"), keep=5)
        assert checkpointer.save(1, make_state(1))
        checkpointer.wait()
        noise = jax.random.normal(jax.random.PRNGKey(0), (256, 256))  # does not compress
        big = TrainState.create(
            {"net": {"w": noise, "b": jnp.zeros((32,))}},
            {"net": optax.adam(1e-3)},
        )
        with pytest.raises(CheckpointSaveError) as info:
            checkpointer.save(2, big)
            checkpointer.wait()
        checkpointer.close()
        assert str(info.value).startswith(
            f"no space left on device while saving step 2 to {mount / 'checkpoints' / '2'}; "
        )
        assert str(info.value).endswith("the last good step 1 is intact")
        assert not any(r.exc_info for r in caplog.records if "orbax" in r.pathname)
        assert sorted(os.listdir(mount / "checkpoints")) == ["1"]
        step, _ = CheckpointReader(str(mount / "checkpoints")).restore_latest()
        assert step == 1
    finally:
        subprocess.run(["umount", str(mount)], check=False)
