"""A frozen stage saved by an older version: training-only fields added since are filled in with
the value it was trained with; a field that changes the network is refused in one line."""

from __future__ import annotations

import os

import pytest

from fsq_jax import config_lib, run_dir, train
from fsq_jax.config_lib import ConfigError
from fsq_jax.train import frozen


def _saved_tokenizer(tmp_path, drop: str) -> str:
    stored = run_dir.config_json(config_lib.load("maskgit/tokenizer.py:fsq,tiny"))
    section, _, name = drop.rpartition(".")
    node = stored
    for part in filter(None, section.split(".")):
        node = node[part]
    del node[name]
    workdir = str(tmp_path / "tokenizer")
    os.makedirs(workdir)
    run_dir.write_json(os.path.join(workdir, run_dir.CONFIG_FILE), stored)
    return workdir


def test_a_run_saved_before_gradient_accumulation_reads_as_one_micro_batch(tmp_path):
    workdir = _saved_tokenizer(tmp_path, "grad_accum_steps")
    config = frozen.read_frozen_config(workdir, "tokenizer_workdir")
    assert config.grad_accum_steps == 1
    transformer = config_lib.load("maskgit/transformer.py:fsq,tiny")
    transformer.tokenizer_workdir = workdir
    train.validate(transformer)  # the stage fits this version of the code


def test_a_run_saved_before_a_model_field_is_refused_naming_it(tmp_path):
    workdir = _saved_tokenizer(tmp_path, "model.shortcut")
    transformer = config_lib.load("maskgit/transformer.py:fsq,tiny")
    transformer.tokenizer_workdir = workdir
    with pytest.raises(ConfigError, match=r"does not fit this version.*model\.shortcut"):
        train.validate(transformer)
