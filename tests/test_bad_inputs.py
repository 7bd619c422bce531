"""Bad input, as users type it: every case ends in exactly one line naming the field, flag or
path and what to do, with no traceback (and one with `--verbose`).

The table covers config files and presets, command-line flags and overrides, every kind of
config field check, paths (workdir, data, weights, frozen stages) and hostile files (corrupt
images, pickled or foreign `.npz` weights, unreadable config.json, lock files). Each case runs
the real script in a fresh process, so the flag parsing, the library's checks and the scripts'
reporting are all exercised as a user meets them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
AUTOENCODER = f"{ROOT / 'configs' / 'autoencoder.py'}:fsq,tiny"
TOKENIZER = f"{ROOT / 'configs' / 'maskgit' / 'tokenizer.py'}:fsq,tiny"
TRANSFORMER = f"{ROOT / 'configs' / 'maskgit' / 'transformer.py'}:fsq,tiny"


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input: `args` (with {tmp} for the test's directory) for `script`, what `setup`
    puts on disk first, and the substrings the one line must hold."""

    id: str
    args: tuple[str, ...]
    expected: tuple[str, ...]
    script: str = "train.py"
    setup: Callable[[Path], None] | None = None
    devices: int = 1


def run_args(case_args, config=AUTOENCODER):
    return ("--config", config, "--workdir={tmp}/run", *case_args)


def train_case(id, *overrides, expected, config=AUTOENCODER, setup=None, devices=1):
    return Case(id, run_args(overrides, config), tuple(expected), setup=setup, devices=devices)


# -- files the cases put on disk ---------------------------------------------------------------


def write(relative, text):
    def setup(tmp):
        path = tmp / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return setup


def image_folder(corrupt_train=False, flat=False, empty=False, mixed=False):
    def setup(tmp):
        root = tmp / "images"
        for split in (("",) if flat else ("train", "validation")):
            for label in ("a", "b"):
                directory = root / split / label
                directory.mkdir(parents=True)
                for i in range(0 if empty else 4):
                    path = directory / f"{i}.png"
                    if corrupt_train and split == "train":
                        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
                    else:
                        Image.new("RGB", (12, 12), (i * 40, 0, 0)).save(path)
        if mixed:
            Image.new("RGB", (12, 12)).save(root / "train" / "loose.png")
    return setup


def pickled_npz(tmp):
    np.savez(tmp / "weights.npz", arrays=np.array([{"not": "an array"}], dtype=object))


def foreign_npz(tmp):
    np.savez(tmp / "weights.npz", conv1=np.zeros((3, 3), np.float32))


def run_dir_with_config(config_text, checkpoints=False):
    def setup(tmp):
        (tmp / "run").mkdir()
        (tmp / "run" / "config.json").write_text(config_text)
        if checkpoints:
            (tmp / "run" / "checkpoints" / "4").mkdir(parents=True)
    return setup


def autoencoder_config_json():
    from fsq_jax import run_dir
    from fsq_jax.config_lib import load

    return json.dumps(run_dir.config_json(load(AUTOENCODER)))


def lock_of(host):
    def setup(tmp):
        (tmp / "run").mkdir()
        (tmp / "run" / "train.lock").write_text(json.dumps(
            {"pid": 12345, "host": host, "started": 1.7e9, "process_start": None,
             "token": "x"}))
    return setup


def not_a_run(tmp):
    (tmp / "tokenizer").mkdir()


CASES = [
    # -- config files and presets ------------------------------------------------------------
    Case("config-file-missing", ("--config={tmp}/nope.py:fsq,tiny", "--workdir={tmp}/run"),
         ("config error: --config={tmp}/nope.py:fsq,tiny: config file", "nope.py", "not found")),
    Case("config-path-is-a-directory", ("--config={tmp}", "--workdir={tmp}/run"),
         ("config error: --config={tmp}: '{tmp}' is a directory, not a config file",)),
    Case("config-file-syntax-error", ("--config", "{tmp}/bad.py", "--workdir={tmp}/run"),
         ("config error: --config={tmp}/bad.py: SyntaxError: invalid syntax (bad.py, line 1)",),
         setup=write("bad.py", "def get_config(:\n")),
    Case("config-file-without-get-config", ("--config={tmp}/empty.py", "--workdir={tmp}/run"),
         ("config error: --config={tmp}/empty.py: the config file has no get_config(arg)",),
         setup=write("empty.py", "x = 1\n")),
    Case("unknown-preset", ("--config", f"{AUTOENCODER[:-9]}:fsq,huge", "--workdir={tmp}/run"),
         ("config error: --config=", "fsq,huge: config arg 'fsq,huge': unknown preset 'huge'; "
          "presets: fsq, vq",)),
    Case("two-quantizer-presets", ("--config", f"{AUTOENCODER[:-9]}:fsq,vq",
                                   "--workdir={tmp}/run"),
         ("config arg 'fsq,vq': quantizer given twice ('fsq' and 'vq'); choose one",)),
    Case("unknown-preset-of-the-tokenizer", ("--config", f"{TOKENIZER[:-9]}:fsq,huge",
                                             "--workdir={tmp}/run"),
         ("config error: --config=", "unknown preset 'huge'",)),
    # -- flags and overrides -----------------------------------------------------------------
    train_case("unknown-field", "--config.unknown=1",
               expected=["config error: --config.unknown=1: the config has no field 'unknown'"]),
    train_case("misspelt-field", "--config.optimizer.learning_rat=1",
               expected=["--config.optimizer.learning_rat=1: the config has no field "
                         "'learning_rat'; did you mean 'learning_rate'?"]),
    train_case("field-of-wrong-type", "--config.total_steps=abc",
               expected=["flag error: flag --config.total_steps=abc: invalid literal for int()"]),
    train_case("section-given-a-number", "--config.data=3",
               expected=["flag error: flag --config.data=3: Failed to parse '3' as a "
                         "ConfigDict"]),
    Case("override-without-value", ("--config", AUTOENCODER, "--workdir={tmp}/run",
                                    "--config.total_steps"),
         ("flag error: Missing value for flag --config.total_steps",)),
    train_case("stray-argument", "extra",
               expected=["flag error: unexpected arguments: extra"]),
    train_case("unknown-flag", "--foo=1",
               expected=["flag error: Unknown command line flag 'foo'"]),
    Case("empty-workdir", ("--config", AUTOENCODER, "--workdir="),
         ("flag error: flag --workdir=: --workdir is empty: give a directory",)),
    Case("no-workdir", ("--config", AUTOENCODER),
         ("flag error: flag --workdir=None: Flag --workdir must have a value other than None",)),
    Case("no-config", ("--workdir={tmp}/run",),
         ("flag error: flag --config=None: Flag --config must have a value other than None",)),
    # -- config fields -----------------------------------------------------------------------
    train_case("total-steps-zero", "--config.total_steps=0",
               expected=["config error: config.total_steps = 0: must be >= 1"]),
    train_case("negative-batch-size", "--config.batch_size=-8",
               expected=["config.batch_size = -8: must be >= 1"]),
    train_case("batch-not-divisible-by-devices", "--config.batch_size=3", devices=2,
               expected=["config.batch_size = 3: must be divisible by the number of devices "
                         "(2)"]),
    train_case("infinite-learning-rate", "--config.optimizer.learning_rate=inf",
               expected=["config.optimizer.learning_rate = inf: must be a finite number"]),
    train_case("nan-learning-rate", "--config.optimizer.learning_rate=nan",
               expected=["config.optimizer.learning_rate = nan: must be a finite number"]),
    train_case("zero-learning-rate", "--config.optimizer.learning_rate=0",
               expected=["config.optimizer.learning_rate = 0.0: must be > 0"]),
    train_case("infinite-ema-decay", "--config.ema_decay=-inf",
               expected=["config.ema_decay = -inf: must be a finite number"]),
    train_case("ema-decay-one", "--config.ema_decay=1.0",
               expected=["config.ema_decay = 1.0: must be in [0, 1)"]),
    train_case("unknown-nan-policy", "--config.nan_policy=sometimes",
               expected=["config.nan_policy = 'sometimes': must be one of 'stop', 'skip'"]),
    train_case("zero-max-consecutive-skips", "--config.max_consecutive_skips=0",
               expected=["config.max_consecutive_skips = 0: must be >= 1"]),
    train_case("keep-no-checkpoints", "--config.keep_checkpoints=0",
               expected=["config.keep_checkpoints = 0: must be >= 1"]),
    train_case("negative-eval-steps", "--config.eval_steps=-1",
               expected=["config.eval_steps = -1: must be >= 0"]),
    train_case("adam-b1-one", "--config.optimizer.b1=1.0",
               expected=["config.optimizer.b1 = 1.0: must be in [0, 1)"]),
    train_case("weight-decay-with-adam", "--config.optimizer.weight_decay=0.1",
               expected=["config.optimizer.weight_decay = 0.1: needs name='adamw'"]),
    train_case("weight-decay-pattern-not-a-regex", "--config.optimizer.weight_decay_pattern=(",
               expected=["config.optimizer.weight_decay_pattern", "not a regular expression"]),
    train_case("unknown-optimizer", "--config.optimizer.name=sgdd",
               expected=["config.optimizer.name = 'sgdd': must be one of 'adam'"]),
    train_case("unknown-schedule", "--config.optimizer.schedule=exponential",
               expected=["config.optimizer.schedule = 'exponential': must be one of"]),
    train_case("unknown-quantizer", "--config.quantizer.name=pq",
               expected=["config.quantizer.name = 'pq': not a registered quantizer (one of fsq"]),
    train_case("fsq-level-of-one", "--config.quantizer.fsq.levels=(1,5)",
               expected=["config.quantizer.fsq: levels must all be >= 2, got 1 in (1, 5)"]),
    train_case("image-size-too-small", "--config.data.image_size=4",
               expected=["config.data.image_size = 4: must be >= 8"]),
    train_case("image-size-not-divisible", "--config.data.image_size=18",
               expected=["config.data.image_size = 18: must be divisible by 4"]),
    train_case("tokenizer-image-size-not-a-multiple", "--config.data.image_size=34",
               config=TOKENIZER,
               expected=["config.data.image_size = 34: must be a multiple of the tokenizer's "
                         "downsampling factor 4"]),
    train_case("unknown-data-source", "--config.data.source=http://example.com/x",
               expected=["config.data.source = 'http://example.com/x': must be 'scenes', "
                         "'tfds:<name>' or 'folder:<path>'"]),
    train_case("tfds-without-a-name", "--config.data.source=tfds:",
               expected=["config.data.source = 'tfds:': the name or path after ':' is empty"]),
    train_case("missing-image-folder", "--config.data.source=folder:{tmp}/missing",
               expected=["config.data.source = 'folder:{tmp}/missing': no such directory "
                         "'{tmp}/missing'"]),
    train_case("negative-data-seed", "--config.data.seed=-1",
               expected=["config.data.seed = -1: must be in [0, 2^32)"]),
    train_case("zero-max-pixels", "--config.data.max_pixels=0",
               expected=["config.data.max_pixels = 0: must be >= 1"]),
    train_case("holdout-of-everything", "--config.data.folder_holdout=1.0",
               expected=["config.data.folder_holdout = 1.0: must be in [0, 1)"]),
    train_case("task-not-a-spec", "--config.task=nope",
               expected=["config.task = 'nope': must be 'module.path:ClassName'"]),
    train_case("task-module-missing", "--config.task=fsq_jax.nothing:Task",
               expected=["config.task = 'fsq_jax.nothing:Task': cannot import module "
                         "'fsq_jax.nothing'"]),
    train_case("task-class-missing", "--config.task=fsq_jax.tasks.autoencoder:Nope",
               expected=["config.task = 'fsq_jax.tasks.autoencoder:Nope': module "
                         "'fsq_jax.tasks.autoencoder' has no class 'Nope'"]),
    train_case("token-cache-passes-zero", "--config.token_cache.passes=0",
               "--config.tokenizer_workdir={tmp}", config=TRANSFORMER,
               expected=["config.token_cache.passes = 0: must be >= 1"]),
    # -- paths -------------------------------------------------------------------------------
    train_case("frozen-stage-missing", "--config.tokenizer_workdir={tmp}/no_tokenizer",
               config=TRANSFORMER,
               expected=["config error: config.tokenizer_workdir = '{tmp}/no_tokenizer': not a "
                         "directory; train that stage first"]),
    train_case("frozen-stage-not-a-run", "--config.tokenizer_workdir={tmp}/tokenizer",
               config=TRANSFORMER, setup=not_a_run,
               expected=["config.tokenizer_workdir = '{tmp}/tokenizer': {tmp}/tokenizer/"
                         "config.json not found: '{tmp}/tokenizer' is not a run directory"]),
    Case("workdir-is-a-file", ("--config", AUTOENCODER, "--workdir={tmp}/file"),
         ("workdir {tmp}/file is a file, not a directory: choose another --workdir",),
         setup=write("file", "x")),
    Case("workdir-under-a-file", ("--config", AUTOENCODER, "--workdir={tmp}/file/run"),
         ("cannot create the workdir {tmp}/file/run: Not a directory",),
         setup=write("file", "x")),
    train_case("flat-image-folder", "--config.data.source=folder:{tmp}/images",
               setup=image_folder(flat=True),
               expected=["config error: config.data.source = 'folder:{tmp}/images': image "
                         "folder '{tmp}/images' has no validation/ (or val/) subfolder",
                         "data.folder_holdout"]),
    train_case("image-folder-without-images", "--config.data.source=folder:{tmp}/images",
               setup=image_folder(empty=True),
               expected=["data error: image folder '{tmp}/images/train' holds no images"]),
    train_case("image-folder-with-loose-images", "--config.data.source=folder:{tmp}/images",
               setup=image_folder(mixed=True),
               expected=["data error: image folder '{tmp}/images/train' mixes class "
                         "subfolders"]),
    train_case("corrupt-training-images", "--config.data.source=folder:{tmp}/images",
               setup=image_folder(corrupt_train=True),
               expected=["data error: cannot read image '{tmp}/images/train/", ".png'",
                         "(set data.on_corrupt='skip' to skip unreadable files)"]),
    # -- hostile files -----------------------------------------------------------------------
    train_case("perceptual-weights-missing", "--config.loss.perceptual_network=resnet50",
               "--config.loss.perceptual_weights={tmp}/missing.npz", config=TOKENIZER,
               expected=["loss.perceptual_weights = '{tmp}/missing.npz'"]),
    train_case("perceptual-weights-pickled", "--config.loss.perceptual_network=resnet50",
               "--config.loss.perceptual_weights={tmp}/weights.npz", config=TOKENIZER,
               setup=pickled_npz,
               expected=["weights error: loss.perceptual_weights = '{tmp}/weights.npz': "
                         "'{tmp}/weights.npz' is not a readable .npz"]),
    train_case("perceptual-weights-not-an-npz", "--config.loss.perceptual_network=resnet50",
               "--config.loss.perceptual_weights={tmp}/weights.npz", config=TOKENIZER,
               setup=write("weights.npz", "not a zip file"),
               expected=["weights error: loss.perceptual_weights = '{tmp}/weights.npz': "
                         "'{tmp}/weights.npz' is not a readable .npz"]),
    train_case("perceptual-weights-of-another-network",
               "--config.loss.perceptual_network=resnet50",
               "--config.loss.perceptual_weights={tmp}/weights.npz", config=TOKENIZER,
               setup=foreign_npz,
               expected=["loss.perceptual_weights", "{tmp}/weights.npz"]),
    train_case("workdir-locked-by-another-host", setup=lock_of("elsewhere"),
               expected=["workdir {tmp}/run is in use by another training run (pid 12345 on "
                         "elsewhere", "delete {tmp}/run/train.lock and rerun"]),
    train_case("unreadable-lock-file", setup=write("run/train.lock", "{not json"),
               expected=["workdir {tmp}/run has an unreadable lock file {tmp}/run/train.lock"]),
    train_case("unreadable-config-json-beside-checkpoints",
               setup=run_dir_with_config("{not json", checkpoints=True),
               expected=["config error: {tmp}/run/config.json is unreadable or not a config"]),
    Case("evaluate-missing-workdir", ("--workdir={tmp}/missing",),
         ("evaluation failed: {tmp}/missing/config.json not found: '{tmp}/missing' is not a "
          "run directory",), script="evaluate.py"),
    Case("evaluate-garbled-config-json", ("--workdir={tmp}/run",),
         ("evaluation failed: {tmp}/run/config.json is not valid JSON",),
         script="evaluate.py", setup=run_dir_with_config("{not json")),
    Case("evaluate-run-without-checkpoints", ("--workdir={tmp}/run",),
         ("evaluation failed: no checkpoints in '{tmp}/run'",), script="evaluate.py",
         setup=lambda tmp: run_dir_with_config(autoencoder_config_json())(tmp)),
    Case("sample-missing-workdir", ("--workdir={tmp}/missing",),
         ("cannot sample from '{tmp}/missing': {tmp}/missing/config.json not found",),
         script="sample.py"),
]


def environment(devices):
    return dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu",
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def run_case(case, tmp_path, *extra):
    if case.setup is not None:
        case.setup(tmp_path)
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in case.args]
    return subprocess.run([sys.executable, str(ROOT / "scripts" / case.script), *args, *extra],
                          cwd=ROOT, env=environment(case.devices), capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_ends_in_one_line_naming_it(case, tmp_path):
    result = run_case(case, tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(lines) == 1, result.stderr[-3000:]
    for expected in case.expected:
        assert expected.replace("{tmp}", str(tmp_path)) in lines[0], lines[0]
    if not any(c.id == case.id for c in CASES if c.setup is not None):
        # Refused before the run was accepted: nothing was created.
        assert not (tmp_path / "run").exists()


def test_the_table_covers_the_issues_count():
    assert len(CASES) >= 58
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("case_id", ["config-file-syntax-error", "infinite-learning-rate",
                                     "corrupt-training-images", "evaluate-missing-workdir"])
def test_verbose_shows_the_traceback(case_id, tmp_path):
    case = next(c for c in CASES if c.id == case_id)
    result = run_case(case, tmp_path, "--verbose")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr, result.stderr[-3000:]

