"""Config validation: every bad field fails with one line naming it, before any compilation."""

from __future__ import annotations

import ml_collections
import pytest

from configs import autoencoder as autoencoder_config
from fsq_jax import train
from fsq_jax.tasks.autoencoder import AutoencoderTask


class NoCompileTask(AutoencoderTask):
    """Fails loudly if the loop gets as far as initialising (i.e. compiling) anything."""

    def init_state(self, rng, batch):
        raise AssertionError("init_state reached: validation must fail first")


def base():
    return autoencoder_config.get_config("fsq,tiny")


def with_field(path, value):
    """A config with `path` set to `value`, bypassing ConfigDict's type safety like a file can."""
    raw = base().to_dict()
    node = raw
    *parents, leaf = path.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    return ml_collections.ConfigDict(raw)


BAD = [
    ("unknown_field", 1, "config.unknown_field: unknown field; allowed fields:"),
    ("model.depth", 3, "config.model.depth: unknown field; allowed fields: compute_dtype, "),
    ("optimizer.learning_rat", 0.1, "config.optimizer.learning_rat: unknown field"),
    ("data.sorce", "scenes", "config.data.sorce: unknown field"),
    ("batch_size", "8", "config.batch_size = '8': expected int, got str"),
    ("model.width", 8.5, "config.model.width = 8.5: expected int"),
    ("fsdp", 1, "config.fsdp = 1: expected bool, got int"),
    ("total_steps", 0, "config.total_steps = 0: must be >= 1"),
    ("batch_size", 12, "config.batch_size = 12: must be divisible by the number of devices (8)"),
    ("ema_decay", 1.0, "config.ema_decay = 1.0: must be in [0, 1)"),
    ("nan_policy", "ignore", "config.nan_policy = 'ignore': must be one of 'stop', 'skip'"),
    ("keep_checkpoints", 0, "config.keep_checkpoints = 0: must be >= 1"),
    ("task", "autoencoder", "config.task = 'autoencoder': must be 'module.path:ClassName'"),
    ("quantizer.levels", (1, 5), "config.quantizer: "),
    ("quantizer.levels", (2**16, 2**16), "fit int32"),
    ("quantizer.name", "pq", "config.quantizer.name = 'pq': must be one of"),
    ("quantizer.level", (8, 5), "config.quantizer.level: unknown field"),
    ("optimizer.schedule", "step", "config.optimizer.schedule = 'step': must be one of"),
    ("data.image_size", 18, "config.data.image_size = 18: must be divisible by 4"),
    ("data.source", "folder:/no/such/dir", "config.data.source = 'folder:/no/such/dir': no such"),
    ("data.source", "csv:x", "config.data.source = 'csv:x'"),
    ("model.compute_dtype", "float8", "config.model.compute_dtype = 'float8': must be one of"),
]


@pytest.mark.parametrize("path, value, message", BAD, ids=[f"{p}={v}" for p, v, _ in BAD])
def test_bad_field_fails_before_compilation_naming_it(tmp_path, path, value, message):
    config = with_field(path, value)
    with pytest.raises((train.ConfigError, ValueError)) as info:
        train.train_and_evaluate(config, str(tmp_path), NoCompileTask(config))
    text = str(info.value)
    assert message in text
    assert "\n" not in text
    assert not (tmp_path / "checkpoints").exists()


def test_reference_configs_are_valid():
    for arg in ("fsq,tiny", "fsq,small", "fsq"):
        config = autoencoder_config.get_config(arg)
        train.validate_config(config, AutoencoderTask(config), num_devices=8)


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="unknown preset 'tiniest'"):
        autoencoder_config.get_config("fsq,tiniest")


def test_load_task_errors_name_the_task_field():
    config = base()
    config.task = "fsq_jax.tasks.nothing_here:Task"
    with pytest.raises(train.ConfigError, match="cannot import module"):
        train.load_task(config)
    config.task = "fsq_jax.tasks.autoencoder:NoSuchTask"
    with pytest.raises(train.ConfigError, match="has no 'NoSuchTask'"):
        train.load_task(config)
    config.task = "fsq_jax.tasks.autoencoder:AutoencoderTask"
    assert isinstance(train.load_task(config), AutoencoderTask)


def test_default_config_covers_the_documented_loop_fields():
    config = train.default_config()
    for field in (
        "task",
        "seed",
        "total_steps",
        "batch_size",
        "eval_batch_size",
        "log_every",
        "eval_every",
        "images_every",
        "checkpoint_every",
        "keep_checkpoints",
        "ema_decay",
        "nan_policy",
        "fsdp",
        "data",
        "eval_steps",
    ):
        assert field in config and config[field] is not None
