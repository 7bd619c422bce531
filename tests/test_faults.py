"""Fault injection: what a run survives, and how it says what went wrong.

The fast tests drive the parts directly (image folders with symlink loops, oversized and corrupt
images, flat folders; a token-cache build stopped by SIGTERM, orphaned staging directories). The
slow ones run scripts/train.py as a user or a requeueing scheduler would and inject the faults
from outside: kill -9 at random points (the resumed run must end bit-identical to an
uninterrupted one), SIGTERM in training, evaluation and the token-cache build, truncated and
deleted checkpoint files, a finished run rerun, a changed config, a diverging run.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from training_processes import committed_steps, read_until

from fsq_jax import data
from fsq_jax.data import folder
from fsq_jax.train.stopping import StopRequestedError
from maskgit import token_cache

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Image folders.


def _images(directory, count, size=(12, 12), start=0):
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        colour = np.full((*size, 3), (37 * i) % 251 + 1, np.uint8)
        Image.fromarray(colour).save(directory / f"{i:03d}.png")


def test_symlink_loops_are_followed_once(tmp_path):
    _images(tmp_path / "train" / "cats", 2)
    _images(tmp_path / "validation" / "cats", 1)
    os.symlink(tmp_path / "train" / "cats", tmp_path / "train" / "cats" / "again")  # to itself
    os.symlink(tmp_path, tmp_path / "train" / "cats" / "up")  # to the root, above the split
    (tmp_path / "train" / "cats" / "deeper").mkdir()
    os.symlink(tmp_path / "train", tmp_path / "train" / "cats" / "deeper" / "split")
    started = time.monotonic()
    source = folder.FolderSource(str(tmp_path), "train")
    assert time.monotonic() - started < 5
    assert [Path(p).name for p in source.paths] == ["000.png", "001.png"]
    assert source.class_names == ["cats"]


def test_an_oversized_image_is_refused_from_its_header_before_decoding(tmp_path, monkeypatch):
    big = tmp_path / "big.png"
    Image.new("RGB", (3000, 2000)).save(big)  # 6 Mpx, a few KB on disk
    from PIL import ImageFile

    decoded = []
    original = ImageFile.ImageFile.load  # what decodes a file's pixels

    def load(self):
        decoded.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with pytest.raises(folder.CorruptImageError) as info:
        folder.read_image(str(big), max_pixels=1_000_000)
    assert str(info.value) == (f"cannot read image {str(big)!r}: 3000x2000 = 6.0 Mpx, more than "
                               "data.max_pixels = 1000000 (raise it to read such images)")
    assert decoded == []  # refused before a single pixel was decoded
    assert folder.read_image(str(big), max_pixels=6_000_000).shape == (2000, 3000, 3)
    assert decoded and set(decoded) == {(3000, 2000)}  # decoded once allowed


def test_the_default_pixel_limit_is_far_below_pils(tmp_path):
    assert data.default_config().max_pixels == folder.MAX_PIXELS == 50_000_000
    assert folder.MAX_PIXELS < Image.MAX_IMAGE_PIXELS / 1.5  # PIL warns at 89 Mpx, fails at 179


def test_a_bad_image_is_warned_once_decoded_once_and_reported(tmp_path, monkeypatch, caplog):
    _images(tmp_path / "train" / "cats", 3)
    _images(tmp_path / "val" / "cats", 1)
    broken = tmp_path / "train" / "cats" / "001.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    reads = []
    original = folder.read_image
    monkeypatch.setattr(folder, "read_image",
                        lambda path, max_pixels: reads.append(path) or original(path, max_pixels))
    with caplog.at_level(logging.WARNING, logger="fsq_jax.data.folder"):
        for _ in range(3):  # a run opens its sources again and again, every epoch reads again
            source = folder.FolderSource(str(tmp_path), "train", on_corrupt="skip")
            images = [source[i]["image"] for i in range(len(source)) for _ in range(2)]
            assert list(source.skipped) == [str(broken)]
    assert reads.count(str(broken)) == 1
    assert caplog.text.count("skipping unreadable image") == 1
    np.testing.assert_array_equal(images[2], images[4])  # replaced by the next readable one
    report = folder.skip_report(f"folder:{tmp_path}")
    assert report["count"] == 1 and list(report["paths"]) == [str(broken)]
    assert report["paths"][str(broken)] == source.skipped[str(broken)] != ""
    assert folder.skip_report(f"folder:{tmp_path / 'elsewhere'}") == {"count": 0, "paths": {}}
    assert folder.skip_report("scenes") == {"count": 0, "paths": {}}


def test_a_flat_folder_never_validates_on_its_training_images(tmp_path):
    _images(tmp_path / "dogs", 30)
    _images(tmp_path / "cats", 30)
    assert len(folder.FolderSource(str(tmp_path), "train")) == 60
    with pytest.raises(folder.FolderLayoutError) as info:
        folder.FolderSource(str(tmp_path), "validation")
    assert str(info.value) == (
        f"image folder {str(tmp_path)!r} has no validation/ (or val/) subfolder (without split "
        "subfolders all its images are the train split), and evaluating on the training images "
        f"would overstate every metric: make {tmp_path / 'train'} and "
        f"{tmp_path / 'validation'} subfolders, or hold out a fraction of the images for it "
        "with data.folder_holdout (e.g. 0.05)")
    train = folder.FolderSource(str(tmp_path), "train", holdout=0.2)
    validation = folder.FolderSource(str(tmp_path), "validation", holdout=0.2)
    assert set(train.paths).isdisjoint(validation.paths)
    assert len(train) + len(validation) == 60 and 4 <= len(validation) <= 20
    assert validation.class_names == ["cats", "dogs"]
    # A hash of each path: adding images moves none of the others between the splits.
    _images(tmp_path / "cats", 10, start=30)
    grown = folder.FolderSource(str(tmp_path), "validation", holdout=0.2)
    assert set(validation.paths) <= set(grown.paths)
    with pytest.raises(folder.FolderLayoutError, match="leaves no image for the validation"):
        folder.FolderSource(str(tmp_path), "validation", holdout=1e-9)


def test_split_subfolders_must_include_the_split_asked_for(tmp_path):
    _images(tmp_path / "train", 2)
    with pytest.raises(folder.FolderLayoutError, match=r"has no validation/ \(or val/\) "
                                                       r"subfolder, and evaluating on the"):
        folder.FolderSource(str(tmp_path), "validation")
    (tmp_path / "train").rename(tmp_path / "val")
    with pytest.raises(folder.FolderLayoutError, match="has split subfolders but no train/"):
        folder.FolderSource(str(tmp_path), "validation")


# ---------------------------------------------------------------------------------------------
# The token cache: a build stopped by SIGTERM continues; staging directories of dead builds.


CODES = 7


def _cache_inputs(train_size=40, passes=2, fingerprint="tokenizer-a"):
    config = data.default_config()
    config.update(train_size=train_size, image_size=8)
    meta = token_cache.expected_meta(config, fingerprint, (1, 1), CODES, passes)
    return config, meta


def _tokenize(images):
    """A deterministic stand-in for the frozen encoder: [B, H, W, 3] -> [B, 1, 1]."""
    return (images.astype(np.int64).sum(axis=(1, 2, 3)) % CODES).reshape(-1, 1, 1)


def _stopped_build(directory, config, meta, stop_at_call=3, stopped_at=24):
    """A build that receives SIGTERM while tokenising batch `stop_at_call` (of 8 images)."""
    calls = []

    def tokenize(images):
        calls.append(len(images))
        if len(calls) == stop_at_call:
            os.kill(os.getpid(), signal.SIGTERM)
        return _tokenize(images)

    with pytest.raises(StopRequestedError,
                       match=rf"stopped on request at {stopped_at}/80 images; kept in"):
        token_cache.build(str(directory), config, tokenize, meta, batch_size=8, log=lambda _: 0)
    return calls


def test_a_build_stopped_by_sigterm_continues_to_the_same_cache(tmp_path):
    config, meta = _cache_inputs()
    reference = token_cache.build(str(tmp_path / "reference"), config, _tokenize, meta, 8,
                                  log=lambda _: 0)
    cache = tmp_path / "cache"
    calls = _stopped_build(cache, config, meta)
    assert calls == [8, 8, 8]  # stopped after the batch in flight, not at the end
    assert not cache.exists()
    staging = tmp_path / f"cache.partial-{os.getpid()}"
    progress = json.loads((staging / token_cache.PROGRESS_FILE).read_text())
    assert progress["written"] == 24 and progress["total"] == 80
    # Continued in this process, and stopped again.
    assert _stopped_build(cache, config, meta, stop_at_call=2, stopped_at=40) == [8, 8]
    # The next build (as after a kill: the staging directory of a dead process) continues.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    staging.rename(tmp_path / f"cache.partial-{dead.pid}")
    lines, tokenized = [], []
    source = token_cache.build(str(cache), config,
                               lambda images: tokenized.append(len(images)) or _tokenize(images),
                               meta, 8, log=lines.append)
    assert lines[0] == (f"token cache: continuing the build in "
                        f"{tmp_path / f'cache.partial-{dead.pid}'} at 40/80 images")
    assert sum(tokenized) == 40  # only what was missing
    assert len(source) == len(reference) == 80
    for index in range(80):
        assert source[index]["tokens"] == reference[index]["tokens"]
        assert source[index]["label"] == reference[index]["label"]
    assert sorted(os.listdir(tmp_path)) == ["cache", "reference"]  # no staging left
    assert not (cache / token_cache.PROGRESS_FILE).exists()


def test_staging_directories_of_dead_builds_are_cleaned_and_live_ones_kept(tmp_path):
    config, meta = _cache_inputs()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    other_inputs = tmp_path / f"cache.partial-{dead.pid}"
    _stopped_build(tmp_path / "cache", config, _cache_inputs(fingerprint="tokenizer-b")[1])
    (tmp_path / f"cache.partial-{os.getpid()}").rename(other_inputs)
    unrecorded = tmp_path / f"cache.partial-{dead.pid + 100000}"  # old format, no record
    unrecorded.mkdir()
    live_process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f"cache.partial-{live_process.pid}"
        live.mkdir()
        elsewhere = tmp_path / f"cache.partial-{dead.pid + 200000}"
        elsewhere.mkdir()
        (elsewhere / token_cache.PROGRESS_FILE).write_text(json.dumps(
            {"host": "another-host", "pid": 1, "written": 8, "total": 80, "meta": meta}))
        lines = []
        token_cache.build(str(tmp_path / "cache"), config, _tokenize, meta, 8,
                          log=lines.append)
        assert not other_inputs.exists() and not unrecorded.exists()
        assert live.exists() and elsewhere.exists()  # a live build, another host's build
        assert sum("removing" in line for line in lines) == 2
    finally:
        live_process.kill()
        live_process.wait()


# ---------------------------------------------------------------------------------------------
# As a user (or a scheduler) runs it: faults injected from outside the process.

CONFIG = f"{ROOT / 'configs' / 'autoencoder.py'}:fsq,tiny"
QUIET = ("--config.eval_every=0", "--config.images_every=0", "--config.eval_steps=1",
         "--config.evaluators.codebook_batches=1")


def environment(cache_dir):
    return dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu",
                XLA_FLAGS="--xla_force_host_platform_device_count=1",
                JAX_COMPILATION_CACHE_DIR=str(cache_dir),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def train_command(workdir, *overrides, config=CONFIG):
    return [sys.executable, str(ROOT / "scripts" / "train.py"), f"--config={config}",
            f"--workdir={workdir}", *overrides]


def run_train(workdir, cache, *overrides, config=CONFIG, timeout=600):
    return subprocess.run(train_command(workdir, *overrides, config=config), cwd=ROOT,
                          env=environment(cache), capture_output=True, text=True,
                          timeout=timeout)


def start_train(workdir, cache, *overrides, config=CONFIG):
    return subprocess.Popen(train_command(workdir, *overrides, config=config), cwd=ROOT,
                            env=environment(cache), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def final_state(workdir):
    from fsq_jax import train

    return train.restore_latest(str(workdir))[1]


def assert_bit_identical(a, b, what):
    import jax

    for name in ("params", "opt_state", "ema_params", "model_state"):
        leaves_a, leaves_b = jax.tree.leaves(a[name]), jax.tree.leaves(b[name])
        assert len(leaves_a) == len(leaves_b)
        for x, y in zip(leaves_a, leaves_b):
            np.testing.assert_array_equal(x, y, err_msg=f"{name}, {what}")


def last_line(result):
    return result.stderr.strip().splitlines()[-1]


LONG = ("--config.total_steps=30", "--config.log_every=1", "--config.checkpoint_every=3",
        "--config.keep_checkpoints=2", *QUIET)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run of `LONG` and the compilation cache every run here shares."""
    base = tmp_path_factory.mktemp("faults")
    result = run_train(base / "reference", base / "cache", *LONG)
    assert result.returncode == 0, result.stderr[-3000:]
    return base / "reference", base / "cache"


def kill_at(process, step):
    read_until(process, lambda line: line.startswith(f"step {step}/"))
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)


@pytest.mark.slow
def test_kill_minus_9_at_random_points_resumes_bit_identical(reference, tmp_path):
    """Three kills at random steps of one run (mid-step, mid-save, mid-evaluation: wherever
    the step lands), each followed by a requeue; then the run finishes and must equal the
    uninterrupted one bit for bit."""
    reference_dir, cache = reference
    workdir = tmp_path / "run"
    rng = random.Random()
    points = sorted(rng.sample(range(2, 29), 3))
    for point in points:
        kill_at(start_train(workdir, cache, *LONG), point)
    result = run_train(workdir, cache, *LONG)
    assert result.returncode == 0, f"killed at {points}: {result.stderr[-3000:]}"
    assert_bit_identical(final_state(reference_dir), final_state(workdir), f"killed at {points}")
    assert json.loads((workdir / "results.json").read_text())["step"] == 30


@pytest.mark.slow
def test_kill_minus_9_right_after_a_save_started_resumes_bit_identical(reference, tmp_path):
    """The kill lands while the asynchronous save of a step is in flight (its temporary
    directory exists): the half-written step is never used, and removed on the rerun."""
    reference_dir, cache = reference
    workdir = tmp_path / "run"
    process = start_train(workdir, cache, *LONG)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        directory = workdir / "checkpoints"
        if directory.is_dir() and any("tmp" in p.name for p in directory.iterdir()):
            break
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    result = run_train(workdir, cache, *LONG)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not [p for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name]
    assert_bit_identical(final_state(reference_dir), final_state(workdir), "killed mid-save")


@pytest.mark.slow
def test_sigterm_in_training_stops_within_seconds_and_resumes_bit_identical(reference, tmp_path):
    reference_dir, cache = reference
    workdir = tmp_path / "run"
    process = start_train(workdir, cache, *LONG)
    read_until(process, lambda line: line.startswith("step 7/"))
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    assert time.monotonic() - sent < 20
    assert "rerun the same command to resume" in output
    stopped_at = committed_steps(workdir)[-1]
    assert stopped_at >= 7 and not (workdir / "results.json").exists()
    result = run_train(workdir, cache, *LONG)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from the checkpoint at step {stopped_at}" in result.stderr
    assert_bit_identical(final_state(reference_dir), final_state(workdir), "SIGTERM at step 7")


@pytest.mark.slow
def test_sigterm_during_a_long_evaluation_stops_within_seconds(reference, tmp_path):
    _, cache = reference
    workdir = tmp_path / "run"
    evaluation = ("--config.total_steps=4", "--config.eval_every=2", "--config.images_every=0",
                  "--config.eval_steps=100000", "--config.log_every=1")
    process = start_train(workdir, cache, *evaluation)
    read_until(process, lambda line: line.startswith("step 2/"))
    time.sleep(3)  # well into the 100000 evaluation batches
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    assert time.monotonic() - sent < 20
    assert committed_steps(workdir) == [2]
    assert "stopped at step 2 on request; checkpoint saved" in output


@pytest.mark.slow
def test_rerunning_a_finished_run_keeps_everything(reference, tmp_path):
    reference_dir, cache = reference
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(reference_dir, workdir)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in workdir.rglob("*")
              if p.is_file()}
    result = run_train(workdir, cache, *LONG)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == (
        f"{workdir}: finished at step 30 (total_steps = 30); nothing to do, results.json is "
        "kept: raise total_steps to train on, or run scripts/evaluate.py to evaluate it again")
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in workdir.rglob("*")
             if p.is_file()}
    assert after == before


@pytest.mark.slow
def test_a_changed_config_is_refused_and_allowed_only_when_asked(reference, tmp_path):
    reference_dir, cache = reference
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(reference_dir, workdir)
    config_before = (workdir / "config.json").read_text()
    swap = ("--config.total_steps=33", "--config.quantizer.fsq.levels=(5,5,5,8)")
    result = run_train(workdir, cache, *LONG, *swap)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"config error: config.quantizer.fsq.levels [8, 5, 5, 5] -> [5, 5, 5, 8]: {workdir} "
        "holds a run of another config (its config.json); resuming its checkpoints under this "
        "one would mix two experiments: use a new workdir, or resume anyway with "
        "--allow_config_change (allow_config_change=True)")
    assert (workdir / "config.json").read_text() == config_before
    allowed = run_train(workdir, cache, *LONG, *swap, "--allow_config_change")
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "resuming " in allowed.stderr and "with config changes: quantizer.fsq.levels" in \
        allowed.stderr
    assert json.loads((workdir / "results.json").read_text())["step"] == 33


@pytest.mark.slow
def test_a_diverging_run_with_nan_policy_skip_fails_in_one_line(reference, tmp_path):
    _, cache = reference
    result = run_train(tmp_path / "run", cache, "--config.total_steps=20",
                       "--config.nan_policy=skip", "--config.optimizer.learning_rate=1e30",
                       *QUIET)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert last_line(result).startswith(
        "training stopped: 11 updates in a row skipped as non-finite (steps 1-11, the last in ")
    assert not (tmp_path / "run" / "results.json").exists()


def _truncate_largest(step_dir):
    files = [p for p in Path(step_dir).rglob("*") if p.is_file() and p.parent.name == "d"]
    victim = max(files, key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    return victim


def _delete_largest(step_dir):
    files = [p for p in Path(step_dir).rglob("*") if p.is_file() and p.parent.name == "d"]
    victim = max(files, key=lambda p: p.stat().st_size)
    victim.unlink()
    return victim


def _garble_record(step_dir):
    victim = Path(step_dir) / "fsq_manifest.json"
    victim.write_text("{not json")
    return victim


@pytest.mark.slow
@pytest.mark.parametrize("corrupt", [_truncate_largest, _delete_largest, _garble_record],
                         ids=["truncated-array", "deleted-array", "garbled-integrity-record"])
def test_a_damaged_newest_step_falls_back_to_the_one_before(reference, tmp_path, corrupt):
    reference_dir, cache = reference
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(reference_dir, workdir)
    (workdir / "results.json").unlink()  # as if killed right after the last save
    newest, previous = committed_steps(workdir)[-1], committed_steps(workdir)[-2]
    victim = corrupt(workdir / "checkpoints" / str(newest))
    result = run_train(workdir, cache, *LONG)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"checkpoint at step {newest} is unusable" in result.stderr
    assert victim.name in result.stderr
    assert f"resumed from the checkpoint at step {previous}" in result.stderr
    assert_bit_identical(final_state(reference_dir), final_state(workdir), corrupt.__name__)


@pytest.mark.slow
def test_a_failed_start_leaves_no_workdir(reference, tmp_path):
    """The first batch cannot be read: the workdir, its checkpoints/ and lock were made, and
    are gone again (a config error is refused before anything is made at all)."""
    _, cache = reference
    images = tmp_path / "images"
    _images(images / "validation" / "a", 2)
    (images / "train" / "a").mkdir(parents=True)
    for i in range(8):
        (images / "train" / "a" / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    result = run_train(tmp_path / "new" / "run", cache, *QUIET,
                       f"--config.data.source=folder:{images}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert last_line(result).startswith(f"data error: cannot read image '{images / 'train'}")
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_an_image_folder_with_a_loop_a_huge_and_a_corrupt_image_trains_and_reports_them(
        reference, tmp_path):
    _, cache = reference
    images = tmp_path / "images"
    for split, count in (("train", 24), ("validation", 8)):
        for label in ("a", "b"):
            _images(images / split / label, count, size=(20, 20))
    Image.new("RGB", (9000, 6000)).save(images / "train" / "a" / "huge.png")  # 54 Mpx
    (images / "train" / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 64)
    os.symlink(images / "train", images / "train" / "a" / "loop")
    run = ("--config.total_steps=12", "--config.log_every=4", "--config.batch_size=8",
           f"--config.data.source=folder:{images}", *QUIET)
    failed = run_train(tmp_path / "strict", cache, *run)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert last_line(failed).startswith("data error: cannot read image ")
    assert "set data.on_corrupt='skip'" in last_line(failed)
    result = run_train(tmp_path / "run", cache, *run, "--config.data.on_corrupt=skip")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("huge.png", "broken.jpg"):
        assert sum(f"skipping unreadable image {images}" in line and name in line
                   for line in result.stderr.splitlines()) == 1
    skipped = json.loads((tmp_path / "run" / "results.json").read_text())["skipped_images"]
    assert skipped["count"] == 2
    assert "9000x6000 = 54.0 Mpx, more than data.max_pixels = 50000000" in \
        skipped["paths"][str(images / "train" / "a" / "huge.png")]


@pytest.mark.slow
def test_sigterm_during_the_token_cache_build_stops_within_seconds_and_resumes(tmp_path):
    """Stage II builds its token cache before its first step; a preemption then must not wait
    for the build (hours at ImageNet scale)."""
    cache = tmp_path / "cache"
    tokenizer = tmp_path / "tokenizer"
    stage1 = run_train(tokenizer, cache, "--config.total_steps=2", "--config.eval_every=0",
                       "--config.images_every=0", "--config.eval_steps=1",
                       "--config.evaluators.fid=false", "--config.evaluators.usage=false",
                       "--config.model.filters=8", "--config.model.embedding_dim=8",
                       "--config.model.norm_groups=4",
                       config=f"{ROOT / 'configs' / 'maskgit' / 'tokenizer.py'}:fsq,tiny")
    assert stage1.returncode == 0, stage1.stderr[-3000:]
    tokens = tmp_path / "tokens"
    stage2 = (f"--config.tokenizer_workdir={tokenizer}", f"--config.token_cache.dir={tokens}",
              "--config.token_cache.batch_size=8", "--config.token_cache.passes=2",
              "--config.data.train_size=4000",
              "--config.total_steps=2", "--config.eval_every=0", "--config.images_every=0",
              "--config.eval_steps=1", "--config.evaluators.fid=false",
              "--config.model.num_layers=1", "--config.model.hidden_size=32",
              "--config.model.mlp_dim=32", "--config.model.num_heads=2")
    transformer = f"{ROOT / 'configs' / 'maskgit' / 'transformer.py'}:fsq,tiny"
    process = start_train(tmp_path / "stage2", cache, *stage2, config=transformer)
    deadline = time.monotonic() + 300
    progress = None
    while time.monotonic() < deadline and progress is None:
        for staging in tmp_path.glob("tokens.partial-*"):
            record = staging / token_cache.PROGRESS_FILE
            if record.exists() and json.loads(record.read_text())["written"] == 0:
                progress = record
        assert process.poll() is None, process.stdout.read()[-3000:]
        time.sleep(0.05)
    time.sleep(2)  # into the build
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    assert time.monotonic() - sent < 20
    assert "stopped on request at " in output and "rerun the same command" in output
    written = json.loads(progress.read_text())["written"]
    assert 0 < written < 8000 and not tokens.exists()
    assert not (tmp_path / "stage2" / "config.json").exists()  # never accepted
    resumed = run_train(tmp_path / "stage2", cache, *stage2, config=transformer, timeout=1200)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"continuing the build in {progress.parent} at {written}/8000 images" in \
        resumed.stdout
    assert json.loads((tokens / "meta.json").read_text())["num_examples"] == 8000
    assert not list(tmp_path.glob("tokens.partial-*"))


@pytest.mark.slow
def test_a_stale_lock_and_an_unfinished_save_of_a_killed_run_are_cleared(reference, tmp_path):
    reference_dir, cache = reference
    workdir = tmp_path / "run"
    process = start_train(workdir, cache, *LONG)
    read_until(process, lambda line: line.startswith("step 10/"))
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    unfinished = workdir / "checkpoints" / "999.orbax-checkpoint-tmp"
    unfinished.mkdir(parents=True, exist_ok=True)
    (unfinished / "array").write_bytes(b"x" * 1000)
    holder = json.loads((workdir / "train.lock").read_text())
    assert holder["pid"] == process.pid and holder["host"] == socket.gethostname()
    result = run_train(workdir, cache, *LONG)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"left by pid {process.pid}" in result.stderr
    assert not unfinished.exists() and not (workdir / "train.lock").exists()
    assert_bit_identical(final_state(reference_dir), final_state(workdir), "stale lock")
