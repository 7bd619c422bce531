"""FID on without the Inception weights: the run goes on without it, the log says so, and the
evaluators report which metrics were skipped and why (for results.json)."""

from __future__ import annotations

import types

import pytest

from configs.maskgit import tokenizer as tokenizer_configs
from configs.maskgit import transformer as transformer_configs
from fsq_jax.eval import inception
from fsq_jax.train import evaluation
from maskgit import evaluation as maskgit_evaluation

MISSING = "FID Inception weights not found at /nowhere/inception_fid_2015_12_05.npz. Run ..."


@pytest.fixture
def no_weights(monkeypatch):
    def load(cache_dir=None):
        raise FileNotFoundError(MISSING)

    monkeypatch.setattr(inception, "load", load)


def test_tokenizer_evaluators_report_the_skipped_fid(no_weights, caplog):
    config = tokenizer_configs.get_config("fsq,tiny")
    assert config.evaluators.fid  # the tiny preset asks for FID
    evaluators = maskgit_evaluation.tokenizer_evaluators(types.SimpleNamespace(config=config))
    assert [e.name for e in evaluators] == ["reconstruction", "codebook"]
    assert evaluation.skipped_metrics(evaluators) == {"reconstruction/fid": f"skipped: {MISSING}"}
    assert "InceptionV3 weights are missing" in caplog.text
    # The skipped evaluator yields no number, so no made-up FID reaches the results.
    assert evaluation.run_evaluators(evaluators[:1], None, None) == {}


def test_transformer_evaluators_report_all_three_metrics(no_weights):
    config = transformer_configs.get_config("fsq,tiny")
    evaluators = maskgit_evaluation.transformer_evaluators(types.SimpleNamespace(config=config))
    assert evaluation.skipped_metrics(evaluators) == {
        f"sampling/{metric}": f"skipped: {MISSING}" for metric in ("fid", "precision", "recall")}


def test_fid_off_is_not_a_skip(no_weights):
    config = tokenizer_configs.get_config("fsq,tiny")
    config.evaluators.fid = False
    evaluators = maskgit_evaluation.tokenizer_evaluators(types.SimpleNamespace(config=config))
    assert [e.name for e in evaluators] == ["codebook"]
    assert evaluation.skipped_metrics(evaluators) == {}
