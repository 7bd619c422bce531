"""Config validation: every bad field fails with one line naming it, before any compilation."""

from __future__ import annotations

import ml_collections
import pytest

from configs import autoencoder as autoencoder_config
from fsq_jax import config_lib, train
from fsq_jax.tasks.autoencoder import AutoencoderTask
from fsq_jax.train import optim


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
    ("unknown_field", 1, "config.unknown_field: unknown field"),
    ("model.depth", 3, "config.model.depth: unknown field"),
    ("optimizer.learning_rat", 0.1,
     "config.optimizer.learning_rat: unknown field; did you mean 'learning_rate'?"),
    ("data.sorce", "scenes", "config.data.sorce: unknown field; did you mean 'source'?"),
    ("batch_size", "8", "config.batch_size = '8': must be int, got str"),
    ("model.width", 8.5, "config.model.width = 8.5: must be int"),
    ("fsdp", 1, "config.fsdp = 1: must be bool, got int"),
    ("total_steps", 0, "config.total_steps = 0: must be >= 1"),
    ("batch_size", 12, "config.batch_size = 12: must be divisible by the number of devices (8)"),
    ("ema_decay", 1.0, "config.ema_decay = 1.0: must be in [0, 1)"),
    ("nan_policy", "ignore", "config.nan_policy = 'ignore': must be one of 'stop', 'skip'"),
    ("keep_checkpoints", 0, "config.keep_checkpoints = 0: must be >= 1"),
    ("task", "autoencoder", "config.task = 'autoencoder': must be 'module.path:ClassName'"),
    ("quantizer.fsq.levels", (1, 5), "config.quantizer.fsq: levels must all be >= 2"),
    ("quantizer.fsq.levels", (2**16, 2**16), "fit int32"),
    ("quantizer.name", "pq", "config.quantizer.name = 'pq': not a registered quantizer"),
    ("quantizer.fsq.level", (8, 5), "config.quantizer.fsq.level: unknown field"),
    ("quantizer.vq.codebook_size", 0, "config.quantizer.vq: codebook_size must be a positive"),
    ("optimizer.schedule", "step", "config.optimizer.schedule = 'step': must be one of"),
    ("optimizer.learning_rate", float("inf"), "config.optimizer.learning_rate = inf: must be "
     "a finite number"),
    ("data.image_size", 18, "config.data.image_size = 18: must be divisible by 4"),
    ("data.source", "folder:/no/such/dir", "config.data.source = 'folder:/no/such/dir': no such"),
    ("data.source", "csv:x", "config.data.source = 'csv:x'"),
    ("model.compute_dtype", "float8", "config.model.compute_dtype = 'float8': must be one of"),
    ("evaluators", 3, "config.evaluators: must be a config section, got 3"),
]


@pytest.mark.parametrize("path, value, message", BAD, ids=[f"{p}={v}" for p, v, _ in BAD])
def test_bad_field_fails_before_compilation_naming_it(tmp_path, monkeypatch, path, value,
                                                      message):
    def init_state(self, rng, batch):
        raise AssertionError("init_state reached: validation must fail first")

    monkeypatch.setattr(AutoencoderTask, "init_state", init_state)
    config = with_field(path, value)
    with pytest.raises((train.ConfigError, ValueError)) as info:
        train.train_and_evaluate(config, str(tmp_path))
    text = str(info.value)
    assert message in text
    assert "\n" not in text
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "config.json").exists()


def test_every_preset_validates():
    for arg in ("fsq,tiny", "fsq,small", "fsq", "vq,small", "lfq,tiny", "residual_fsq"):
        assert isinstance(train.validate(autoencoder_config.get_config(arg), num_devices=8),
                          AutoencoderTask.config_schema)


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="unknown preset 'tiniest' \\(did you mean 'tiny'"):
        autoencoder_config.get_config("fsq,tiniest")


def test_resolve_task_errors_name_the_task_field():
    config = base()
    config.task = "fsq_jax.tasks.nothing_here:Task"
    with pytest.raises(train.ConfigError, match="cannot import module"):
        train.resolve_task(config)
    config.task = "fsq_jax.tasks.autoencoder:NoSuchTask"
    with pytest.raises(train.ConfigError, match="has no class 'NoSuchTask'"):
        train.resolve_task(config)
    config.task = "fsq_jax.tasks.autoencoder:AutoencoderTask"
    assert train.resolve_task(config) is AutoencoderTask
    assert isinstance(train.build_task(config), AutoencoderTask)


def test_loop_section_defaults_cover_the_documented_fields():
    config = config_lib.loop()
    for field in ("task", "seed", "total_steps", "batch_size", "eval_batch_size", "log_every",
                  "eval_every", "images_every", "checkpoint_every", "keep_checkpoints",
                  "ema_decay", "nan_policy", "fsdp", "data", "eval_steps"):
        assert field in config and config[field] is not None


def test_a_long_warmup_is_shortened_to_a_tenth_of_a_short_run():
    config = base()
    config.optimizer.update(warmup_steps=5_000, schedule="cosine")
    train.validate(config)  # a notice, not an error
    assert optim.warmup_steps(config.optimizer, config.total_steps) == config.total_steps // 10
    assert optim.warmup_steps(config.optimizer, 100_000) == 5_000
