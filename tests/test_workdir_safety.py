"""One run per workdir, read-only tools, and failures that end in one line saying what to do.

The fast tests drive the lock and the loop in-process; the slow ones run scripts/train.py and
scripts/evaluate.py as a user (or a requeueing scheduler) would: kill -9, a flipped bit, two
runs on one workdir, evaluation beside a live run, a full disk.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from training_processes import committed_steps, read_until

from fsq_jax import train
from fsq_jax.train import workdir as workdir_lib
from fsq_jax.train.workdir import LOCK_FILE, WorkdirLock, WorkdirLockedError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = f"{ROOT / 'configs' / 'autoencoder.py'}:fsq,tiny"


def write_lock(workdir, **fields):
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": 1.7e9,
              "process_start": None, "token": "theirs", **fields}
    (workdir / LOCK_FILE).write_text(json.dumps(holder))


def dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_second_lock_is_refused_naming_the_holder(tmp_path):
    first = WorkdirLock(str(tmp_path))
    first.acquire()
    holder = json.loads((tmp_path / LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(WorkdirLockedError) as info:
        WorkdirLock(str(tmp_path)).acquire()
    message = str(info.value)
    assert "\n" not in message
    assert f"(pid {os.getpid()} on {socket.gethostname()}, started 20" in message
    first.release()
    assert not (tmp_path / LOCK_FILE).exists()
    second = WorkdirLock(str(tmp_path))
    second.acquire()  # free again
    second.release()


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    pid = dead_pid()
    write_lock(tmp_path, pid=pid)
    lock = WorkdirLock(str(tmp_path))
    lock.acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert any(f"left by pid {pid} on {socket.gethostname()}" in r.getMessage()
               and "no longer runs" in r.getMessage() for r in caplog.records)
    lock.release()
    assert os.listdir(tmp_path) == []  # no stray temporary files


def test_a_reused_pid_does_not_keep_a_stale_lock(tmp_path):
    """The pid of the dead holder now belongs to another process (here: this one)."""
    write_lock(tmp_path, process_start=1.0)  # our pid, but not our start time
    lock = WorkdirLock(str(tmp_path))
    lock.acquire()
    lock.release()


def test_lock_of_another_host_is_refused_with_how_to_clear_it(tmp_path):
    write_lock(tmp_path, host="elsewhere", pid=12345)
    with pytest.raises(WorkdirLockedError, match=r"pid 12345 on elsewhere, .*cannot tell .* "
                                                 rf"delete {tmp_path / LOCK_FILE} and rerun"):
        WorkdirLock(str(tmp_path)).acquire()


def test_unreadable_lock_file_is_refused_naming_it(tmp_path):
    (tmp_path / LOCK_FILE).write_text("{not json")
    with pytest.raises(WorkdirLockedError, match=rf"unreadable lock file {tmp_path / LOCK_FILE}"):
        WorkdirLock(str(tmp_path)).acquire()


def test_file_systems_without_hard_links_lock_with_o_excl(tmp_path, monkeypatch):
    def no_links(source, destination):
        raise OSError(errno.EPERM, "Operation not permitted", source)

    monkeypatch.setattr(os, "link", no_links)
    lock = WorkdirLock(str(tmp_path))
    lock.acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert os.listdir(tmp_path) == [LOCK_FILE]
    with pytest.raises(WorkdirLockedError, match=f"pid {os.getpid()}"):
        WorkdirLock(str(tmp_path)).acquire()
    lock.release()
    assert os.listdir(tmp_path) == []


def test_release_never_removes_someone_elses_lock(tmp_path):
    lock = WorkdirLock(str(tmp_path))
    lock.acquire()
    write_lock(tmp_path, token="another run took over")
    lock.release()
    assert (tmp_path / LOCK_FILE).exists()


RACE = """
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("workdir", sys.argv[3])  # without jax: fast
workdir = sys.modules["workdir"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(workdir)
WorkdirLock, WorkdirLockedError = workdir.WorkdirLock, workdir.WorkdirLockedError
lock = WorkdirLock(sys.argv[1])
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
try:
    lock.acquire()
    print("won", flush=True)
    time.sleep(2)
except WorkdirLockedError:
    print("refused", flush=True)
"""


def test_exactly_one_of_many_simultaneous_runs_gets_the_lock(tmp_path):
    workdir, go = tmp_path / "run", tmp_path / "go"
    workdir.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    processes = [
        subprocess.Popen([sys.executable, "-c", RACE, str(workdir), str(go), workdir_lib.__file__],
                         stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(6)
    ]
    assert all(p.stdout.readline().strip() == "ready" for p in processes)
    go.touch()
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in processes)
    assert outcomes == ["refused"] * 5 + ["won"]
    assert not (workdir / LOCK_FILE).exists() or os.listdir(workdir) == [LOCK_FILE]


def test_unfinished_saves_of_a_crashed_run_are_removed_only_under_the_lock(tmp_path):
    unfinished = tmp_path / "checkpoints" / "7.orbax-checkpoint-tmp"
    unfinished.mkdir(parents=True)
    (unfinished / "array").write_bytes(b"x" * 100)
    train.Checkpointer(str(tmp_path / "checkpoints")).close()  # no lock: maybe another run's
    assert unfinished.exists()
    checkpointer = train.Checkpointer(str(tmp_path / "checkpoints"),
                                      lock=WorkdirLock(str(tmp_path)))
    assert not unfinished.exists() and (tmp_path / LOCK_FILE).exists()
    checkpointer.close()
    assert not (tmp_path / LOCK_FILE).exists()


def test_training_on_a_locked_workdir_is_refused_before_touching_it(tmp_path):
    from configs import autoencoder as autoencoder_config

    held = WorkdirLock(str(tmp_path))
    held.acquire()
    config = autoencoder_config.get_config("fsq,tiny")
    with pytest.raises(WorkdirLockedError, match=f"pid {os.getpid()}"):
        train.train_and_evaluate(config, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [LOCK_FILE]  # no config.json, no checkpoints
    held.release()


def test_a_config_change_leaves_the_workdirs_config_json_alone(tmp_path):
    """config.json is written once the run is accepted; a run refused because its state does
    not fit the checkpoints leaves the config that does fit them."""
    import jax.numpy as jnp
    import optax

    from configs import autoencoder as autoencoder_config

    other = train.TrainState.create({"model": {"w": jnp.zeros((3, 3))}},
                                    {"model": optax.sgd(0.1)})
    checkpointer = train.Checkpointer(str(tmp_path / "checkpoints"))
    checkpointer.save(2, other)
    checkpointer.close()
    (tmp_path / "config.json").write_text('{"the config": "of those checkpoints"}')
    config = autoencoder_config.get_config("fsq,tiny")
    with pytest.raises(train.CheckpointError, match="does not fit this run's state"):
        train.train_and_evaluate(config, str(tmp_path))
    assert (tmp_path / "config.json").read_text() == '{"the config": "of those checkpoints"}'
    assert not (tmp_path / LOCK_FILE).exists()  # released when the run stopped


# ---------------------------------------------------------------------------------------------
# As a user runs it.


def command(script, workdir, *overrides):
    return [sys.executable, str(ROOT / "scripts" / script), f"--config={CONFIG}",
            f"--workdir={workdir}", *overrides]


def environment(cache_dir):
    return dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        JAX_COMPILATION_CACHE_DIR=str(cache_dir),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )


def run_script(script, workdir, cache_dir, *overrides, timeout=600):
    return subprocess.run(command(script, workdir, *overrides), cwd=ROOT,
                          env=environment(cache_dir), capture_output=True, text=True,
                          timeout=timeout)


def start(workdir, cache_dir, *overrides):
    return subprocess.Popen(command("train.py", workdir, *overrides), cwd=ROOT,
                            env=environment(cache_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for_steps(workdir, count, process, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(committed_steps(workdir)) >= count:
            return committed_steps(workdir)
        assert process.poll() is None, "the run ended early"
        time.sleep(0.01)
    raise AssertionError("no checkpoints")


def flip_one_bit(step_dir):
    files = [p for p in Path(step_dir).rglob("*")
             if p.is_file() and p.parent.name == "d"]  # the array data files of ocdbt
    victim = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x04
    victim.write_bytes(bytes(data))
    return victim


def metrics_steps(workdir):
    with open(Path(workdir) / "metrics.csv") as f:
        return [int(float(r["step"])) for r in csv.DictReader(f)]


def last_line(result):
    return result.stderr.strip().splitlines()[-1]


QUIET = ("--config.eval_every=0", "--config.images_every=0", "--config.eval_steps=1")


@pytest.mark.slow
def test_killed_run_with_a_flipped_bit_in_its_newest_step_resumes_from_the_one_before(tmp_path):
    """kill -9 right after a commit, then one flipped bit in that (newest) step: it is caught
    on restore, the previous step is used, and the stale lock is taken over."""
    cache, workdir = tmp_path / "cache", tmp_path / "run"
    run = ("--config.total_steps=60", "--config.log_every=1", "--config.checkpoint_every=2",
           *QUIET)
    victim = start(workdir, cache, *run)
    steps = wait_for_steps(workdir, 2, victim)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    steps = committed_steps(workdir)
    newest, previous = steps[-1], steps[-2]
    assert (workdir / "checkpoints" / str(newest) / "fsq_manifest.json").exists()
    assert json.loads((workdir / LOCK_FILE).read_text())["pid"] == victim.pid  # left behind
    flipped = flip_one_bit(workdir / "checkpoints" / str(newest))
    result = run_script("train.py", workdir, cache, *run)
    output = result.stderr + result.stdout
    assert result.returncode == 0, output[-3000:]
    assert f"left by pid {victim.pid}" in output
    assert f"checkpoint at step {newest} is unusable: file" in output
    assert f"{flipped.name} fails its CRC32 check" in output
    assert f"resumed from the checkpoint at step {previous}" in output
    assert not (workdir / LOCK_FILE).exists()


@pytest.mark.slow
def test_all_steps_corrupt_refuses_on_every_rerun_and_keeps_the_history(tmp_path):
    cache, workdir = tmp_path / "cache", tmp_path / "run"
    run = ("--config.total_steps=4", "--config.log_every=1", "--config.checkpoint_every=2",
           *QUIET)
    assert run_script("train.py", workdir, cache, *run).returncode == 0
    for step in (2, 4):
        flip_one_bit(workdir / "checkpoints" / str(step))
    config_before = (workdir / "config.json").read_text()
    rows_before = metrics_steps(workdir)
    run = (*run, "--config.total_steps=6")  # train on (the same command is a no-op: finished)
    first = run_script("train.py", workdir, cache, *run)
    assert first.returncode == 1
    assert last_line(first).startswith(f"cannot resume: no usable checkpoint in "
                                       f"{workdir / 'checkpoints'} (step 4: file ")
    assert "refusing to start again from step 0" in last_line(first)
    assert "Traceback" not in first.stderr
    again = run_script("train.py", workdir, cache, *run)  # what a requeueing scheduler does
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert last_line(again) == (
        f"cannot resume: no checkpoint in {workdir / 'checkpoints'}, but "
        f"{workdir / 'checkpoints_corrupt'} holds step(s) 4, 2 set aside as unusable by an "
        "earlier run; refusing to start again from step 0 over this run's history: put a good "
        f"checkpoint back into {workdir / 'checkpoints'}, or delete "
        f"{workdir / 'checkpoints_corrupt'} to start over, or use a new workdir"
    )
    assert metrics_steps(workdir) == rows_before == [1, 2, 3, 4]
    assert (workdir / "config.json").read_text() == config_before
    assert not (workdir / LOCK_FILE).exists()


@pytest.mark.slow
def test_second_run_is_refused_and_evaluation_beside_a_live_run_changes_nothing(tmp_path):
    cache, workdir = tmp_path / "cache", tmp_path / "run"
    first = start(workdir, cache, "--config.total_steps=100000", "--config.log_every=1",
                  "--config.checkpoint_every=2", "--config.keep_checkpoints=2", *QUIET)
    read_until(first, lambda line: line.startswith("step 3/"))
    second = run_script("train.py", workdir, cache, "--config.total_steps=8", *QUIET)
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert last_line(second).startswith(
        f"workdir {workdir} is in use by another training run (pid {first.pid} on "
        f"{socket.gethostname()}, started "
    )
    (workdir / "results.json").write_text('{"step": 0, "mine": true}')  # as a finished run's
    evaluation = run_script("evaluate.py", workdir, cache, "--config.eval_steps=1",
                            f"--out={tmp_path / 'evaluation.json'}")
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    evaluated = json.loads((tmp_path / "evaluation.json").read_text())
    assert evaluated["step"] >= 2
    assert json.loads((workdir / "results.json").read_text()) == {"step": 0, "mine": True}
    assert not (workdir / "checkpoints_corrupt").exists()
    assert first.poll() is None  # the training run went on, saving and deleting steps
    first.send_signal(signal.SIGTERM)
    output, _ = first.communicate(timeout=120)
    assert first.returncode == 0, output[-3000:]
    steps = metrics_steps(workdir)
    assert steps == sorted(set(steps))  # one history, no interleaved rows
    assert not (workdir / LOCK_FILE).exists()


@pytest.mark.slow
def test_disk_full_run_ends_in_one_line(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        result = run_script("train.py", mount / "run", tmp_path / "cache",
                            "--config.total_steps=40", "--config.checkpoint_every=2", *QUIET)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        line = last_line(result)
        assert line.startswith("no space left on device while saving step ")
        assert f" to {mount / 'run' / 'checkpoints'}/" in line
        assert line.endswith(" is intact") and "free space and rerun" in line
        assert sum("o space left" in x for x in result.stderr.splitlines()) == 1
        kept = int(line.split("the last good step ")[1].split()[0])
        assert committed_steps(mount / "run") == [kept]
        assert not (mount / "run" / LOCK_FILE).exists()
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_error_line_names_the_path_and_what_was_being_done(tmp_path):
    (tmp_path / "metrics.csv").mkdir()  # open() for writing fails: IsADirectoryError

    def append_row():
        with open(tmp_path / "metrics.csv", "a") as f:
            f.write("1,2\n")

    with pytest.raises(OSError) as info:
        append_row()
    line = append_row.__code__.co_firstlineno + 1
    assert workdir_lib.error_line(info.value) == (
        f"storage error: Is a directory: {tmp_path / 'metrics.csv'} (IsADirectoryError, errno "
        f"21, while in append_row (test_workdir_safety.py:{line}))"
    )


# ---------------------------------------------------------------------------------------------
# Rerunning a workdir (in-process): a finished run is kept, a changed experiment is refused, a
# failed start leaves nothing, a diverging run stops, a stop during evaluation checkpoints.


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
    """Shares the compiled programs of the in-process runs below (one program, one shape)."""
    import jax

    options = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
               "jax_persistent_cache_min_entry_size_bytes")
    previous = {name: getattr(jax.config, name) for name in options}
    jax.config.update(options[0], str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update(options[1], 0.0)
    jax.config.update(options[2], 0)
    yield
    for name, value in previous.items():
        jax.config.update(name, value)


def tiny(**overrides):
    from configs import autoencoder as autoencoder_config

    config = autoencoder_config.get_config("fsq,tiny")
    config.update(total_steps=4, log_every=2, eval_every=0, images_every=0, checkpoint_every=2,
                  eval_steps=1)
    config.evaluators.codebook_batches = 1
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


def train_tiny(config, workdir, data_fn=None, **kwargs):
    from fsq_jax.tasks.synthetic import smooth_images

    return train.train_and_evaluate(config, str(workdir), data_fn=data_fn or smooth_images,
                                    **kwargs)


def snapshot(directory):
    """{relative path: (size, mtime_ns, bytes for small files)} of every file under it."""
    out = {}
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file():
            stat = path.stat()
            out[str(path.relative_to(directory))] = (
                stat.st_size, stat.st_mtime_ns,
                path.read_bytes() if stat.st_size < 100_000 else None)
    return out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, compilation_cache):
    workdir = tmp_path_factory.mktemp("finished")
    results = train_tiny(tiny(), workdir)
    assert results["step"] == 4 and results["eval"] and results["train"]
    return workdir, results


def test_rerunning_a_finished_run_changes_nothing_and_returns_its_results(
        finished_run, tmp_path, capsys):
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(finished_run[0], workdir)
    before = snapshot(workdir)
    stored = json.loads((workdir / "results.json").read_text())
    assert train_tiny(tiny(), workdir) == stored
    # Fields that may change on resume do not make it another run; the line says what changed
    # in what was measured.
    assert train_tiny(tiny(eval_every=1, **{"evaluators.codebook_batches": 2}), workdir) == stored
    assert snapshot(workdir) == before
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"{workdir}: finished at step 4 (total_steps = 4); nothing to do, "
                      "results.json is kept: raise total_steps to train on, or run "
                      "scripts/evaluate.py to evaluate it again")
    assert out[1].endswith("(its results were measured before config.evaluators."
                           "codebook_batches 1 -> 2)")


def test_a_shape_compatible_change_is_refused_unless_allowed(finished_run, tmp_path):
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(finished_run[0], workdir)
    before = snapshot(workdir)
    swapped = tiny(total_steps=6, **{"quantizer.fsq.levels": (5, 5, 5, 8)})  # same shapes
    with pytest.raises(train.ConfigError) as info:
        train_tiny(swapped, workdir)
    assert str(info.value).startswith(
        f"config.quantizer.fsq.levels [8, 5, 5, 5] -> [5, 5, 5, 8]: {workdir} holds a run of "
        "another config (its config.json);")
    assert "--allow_config_change" in str(info.value) and "\n" not in str(info.value)
    assert snapshot(workdir) == before  # refused before anything was touched
    results = train_tiny(swapped, workdir, allow_config_change=True)
    assert results["step"] == 6
    assert json.loads((workdir / "config.json").read_text())["quantizer"]["fsq"]["levels"] == [
        5, 5, 5, 8]


def test_raising_total_steps_trains_on(finished_run, tmp_path):
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(finished_run[0], workdir)
    results = train_tiny(tiny(total_steps=6, log_every=1), workdir)
    assert results["step"] == 6 and results["train"]
    assert metrics_steps(workdir) == [2, 4, 5, 6]


def test_a_run_restored_at_its_end_without_results_evaluates_before_writing_them(
        finished_run, tmp_path):
    """Killed (or stopped) after its last checkpoint but before results.json: the rerun must
    not write empty metrics."""
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(finished_run[0], workdir)
    (workdir / "results.json").unlink()
    results = train_tiny(tiny(), workdir)
    stored = json.loads((workdir / "results.json").read_text())
    assert stored == results and stored["step"] == 4
    assert stored["eval"] == finished_run[1]["eval"]  # the same state, evaluated alike
    assert stored["evaluators"] == finished_run[1]["evaluators"]


def test_a_failed_start_leaves_no_workdir_behind(tmp_path, compilation_cache):
    def no_data(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "/data/missing.tfrecord")
        yield

    workdir = tmp_path / "new" / "run"
    with pytest.raises(FileNotFoundError):
        train_tiny(tiny(), workdir, data_fn=no_data)
    assert not (tmp_path / "new").exists()  # nor the parent made for it
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "notes.txt").write_text("mine")
    with pytest.raises(FileNotFoundError):
        train_tiny(tiny(), tmp_path / "old", data_fn=no_data)
    assert os.listdir(tmp_path / "old") == ["notes.txt"]  # an existing workdir is kept as it was


def test_a_run_that_failed_before_its_first_checkpoint_may_restart_under_another_config(
        tmp_path, compilation_cache):
    from fsq_jax.tasks.synthetic import smooth_images

    def crash_at_step_3(data_config, split, batch_size, **kwargs):
        for step, batch in enumerate(smooth_images(data_config, split, batch_size, **kwargs)):
            if split == "train" and step == 3:
                raise RuntimeError("simulated crash")
            yield batch

    with pytest.raises(RuntimeError, match="simulated crash"):
        train_tiny(tiny(checkpoint_every=0), tmp_path, data_fn=crash_at_step_3)
    assert (tmp_path / "config.json").exists() and committed_steps(tmp_path) == []
    changed = tiny(seed=1, checkpoint_every=0)
    assert train_tiny(changed, tmp_path)["step"] == 4  # nothing to mix: starts afresh
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 1


def test_skipping_every_update_fails_after_max_consecutive_skips(tmp_path, compilation_cache):
    config = tiny(total_steps=20, nan_policy="skip", max_consecutive_skips=3,
                  **{"optimizer.learning_rate": 1e30})  # every update is non-finite
    with pytest.raises(train.NonFiniteError) as info:
        train_tiny(config, tmp_path)
    assert info.value.step == 4
    assert str(info.value).startswith("4 updates in a row skipped as non-finite (steps 1-4, "
                                      "the last in metric ")
    assert "more than max_consecutive_skips = 3: the run diverged" in str(info.value)
    assert not (tmp_path / "results.json").exists()


def test_the_count_of_skips_in_a_row_survives_a_resume(tmp_path, compilation_cache):
    """Two skips, a checkpoint, a resume, two more: four in a row (> 3) even across runs."""
    diverging = {"nan_policy": "skip", "max_consecutive_skips": 3,
                 "optimizer.learning_rate": 1e30}  # every update is non-finite
    results = train_tiny(tiny(total_steps=2, **diverging), tmp_path)
    assert results["skipped_updates"] == 2 and committed_steps(tmp_path) == [2]
    with pytest.raises(train.NonFiniteError, match=r"^4 updates in a row .* \(steps 1-4, "):
        train_tiny(tiny(total_steps=4, **diverging), tmp_path)


def test_a_stop_during_evaluation_checkpoints_within_a_batch_and_the_rerun_finishes(
        tmp_path, compilation_cache):
    from fsq_jax.tasks.synthetic import smooth_images

    seen = {"validation": 0}

    def stop_in_evaluation(data_config, split, batch_size, **kwargs):
        for batch in smooth_images(data_config, split, batch_size, **kwargs):
            if split == "validation":
                seen["validation"] += 1
                if seen["validation"] == 1:
                    os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler's preemption
            yield batch

    config = tiny(eval_steps=50, **{"evaluators.codebook_batches": 50})
    results = train_tiny(config, tmp_path, data_fn=stop_in_evaluation)
    assert results["preempted"] and results["step"] == 4
    assert seen["validation"] <= 2  # stopped within a batch, not after 100
    assert committed_steps(tmp_path)[-1] == 4 and not (tmp_path / "results.json").exists()
    finished = train_tiny(config, tmp_path)
    assert not finished["preempted"] and finished["eval"]
    assert json.loads((tmp_path / "results.json").read_text())["eval"] == finished["eval"]


# ---------------------------------------------------------------------------------------------
# One line for every failure the user can act on.


@pytest.mark.parametrize("make, expected", [
    (lambda: train.ConfigError("config.seed = -1: must be >= 0"),
     "config error: config.seed = -1: must be >= 0"),
    (lambda: train.NonFiniteError(7, ["metric 'loss'"]),
     "training stopped: non-finite value (NaN/Inf) at step 7 in metric 'loss'"),
    (lambda: train.CheckpointError("no usable checkpoint in /w/checkpoints"),
     "cannot resume: no usable checkpoint in /w/checkpoints"),
    (lambda: WorkdirLockedError("workdir /w is in use by another training run"),
     "workdir /w is in use by another training run"),
    (lambda: __import__("fsq_jax.data", fromlist=["x"]).CorruptImageError(
        "cannot read image '/d/x.png': truncated"),
     "data error: cannot read image '/d/x.png': truncated"),
    (lambda: FileNotFoundError("/w/config.json not found: '/w' is not a run directory"),
     "missing file: /w/config.json not found: '/w' is not a run directory"),
])
def test_failure_line_labels_each_kind_of_failure(make, expected):
    from fsq_jax.train import cli

    line = cli.failure_line(make())
    assert line.startswith(expected) and "\n" not in line


def test_failure_line_names_a_missing_path_and_where_it_was_read(tmp_path):
    from fsq_jax.train import cli

    def read_weights():
        with open(tmp_path / "weights.npz", "rb") as f:
            return f.read()

    with pytest.raises(FileNotFoundError) as info:
        read_weights()
    line = read_weights.__code__.co_firstlineno + 1
    assert cli.failure_line(info.value) == (
        f"missing file: {tmp_path / 'weights.npz'} (No such file or directory, while in "
        f"read_weights (test_workdir_safety.py:{line}))")
    assert cli.failure_line(KeyError("a bug")) is None  # a bug keeps its traceback


def test_a_config_files_traceback_in_a_flag_error_is_cut_to_its_last_line():
    from absl import flags

    from fsq_jax.train import cli

    error = flags.IllegalFlagValueError(
        "flag --config=c.py:fsq,huge: Error whilst parsing config file:\n\nTraceback (most "
        "recent call last):\n  File \"c.py\", line 17, in get_config\n    arg = parse(arg)\n"
        "ValueError: config arg 'fsq,huge': unknown preset 'huge'\n")
    assert cli._flag_error_line(error) == (
        "config error: --config=c.py:fsq,huge: config arg 'fsq,huge': unknown preset 'huge'")
    assert cli._flag_error_line(flags.IllegalFlagValueError("flag --seed=x: not an int")) == (
        "flag error: flag --seed=x: not an int")
