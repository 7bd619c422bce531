"""The two-stage MaskGIT pipeline: config overrides, reuse of finished runs, stage wiring."""

import dataclasses
import json
import os

import pytest

from fsq_jax import run_dir
from maskgit import pipeline


class FakeLoop:
    """Stands in for fsq_jax.train.train_and_evaluate: records calls, writes what the loop
    writes (config.json at start, results.json at the end)."""

    def __init__(self):
        self.calls = []

    def __call__(self, config, workdir):
        self.calls.append((config, workdir))
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(run_dir.config_json(config), f)
        results = {"step": config.total_steps, "train": {}, "eval": {},
                   "evaluators": {"codebook/usage": 0.5}, "call": len(self.calls)}
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f)
        return results


@pytest.fixture
def fake_loop(monkeypatch):
    from fsq_jax import train

    loop = FakeLoop()
    monkeypatch.setattr(train, "train_and_evaluate", loop)
    return loop


@pytest.fixture(scope="module")
def configs():
    return pipeline.configs_for("fsq", "tiny", {"total_steps": 7})


def test_configs_for_applies_shared_and_per_stage_overrides():
    tokenizer, transformer = pipeline.configs_for("fsq", "tiny", {
        "total_steps": 500,
        "quantizer.fsq.levels": (8, 5, 5, 5),
        "transformer.model.num_layers": 2,
        "tokenizer.batch_size": 16,
        "evaluators.fid": False,
    })
    assert tokenizer.total_steps == transformer.total_steps == 500
    assert tuple(tokenizer.quantizer.fsq.levels) == (8, 5, 5, 5)
    assert transformer.model.num_layers == 2 and tokenizer.model.num_res_blocks == 1
    _, default_transformer = pipeline.configs_for("fsq", "tiny")
    assert tokenizer.batch_size == 16
    assert transformer.batch_size == default_transformer.batch_size  # tokenizer.* only
    assert not tokenizer.evaluators.fid and not transformer.evaluators.fid
    assert tokenizer.task == "maskgit.tasks:TokenizerTask"
    assert transformer.task == "maskgit.tasks:TransformerTask"
    vq, _ = pipeline.configs_for("vq", "tiny", {"quantizer.vq.codebook_size": 4096})
    assert vq.quantizer.vq.codebook_size == 4096


@pytest.mark.parametrize("overrides, match", [
    ({"no_such_field": 1}, "no_such_field"),
    ({"tokenizer.model.no_such": 1}, "no_such"),
    ({"transformer.quantizer.fsq.levels": (5, 3)}, "quantizer"),
    ({"total_steps": "many"}, "total_steps"),
])
def test_bad_overrides_name_the_key(overrides, match):
    with pytest.raises(ValueError, match=match):
        pipeline.configs_for("fsq", "tiny", overrides)


def test_configs_for_rejects_unknown_presets():
    with pytest.raises(ValueError, match="unknown preset 'lfq2' \\(did you mean 'lfq'"):
        pipeline.configs_for("lfq2")
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        pipeline.configs_for("fsq", "huge")


def _write_run(workdir, config, step):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(run_dir.config_json(config), f)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump({"step": step, "evaluators": {"reconstruction/fid": 12.5}}, f)


def test_run_stage_reuses_a_finished_run(tmp_path, configs, fake_loop, capsys):
    tokenizer, _ = configs
    workdir = str(tmp_path / "run")
    _write_run(workdir, tokenizer, tokenizer.total_steps)
    results = pipeline.run_stage(tokenizer, workdir)
    assert results["evaluators"] == {"reconstruction/fid": 12.5}
    assert fake_loop.calls == []
    assert "reusing" in capsys.readouterr().out


def test_run_stage_trains_when_unfinished_or_asked_to_restart(tmp_path, configs, fake_loop,
                                                               capsys):
    tokenizer, _ = configs
    workdir = str(tmp_path / "run")
    _write_run(workdir, tokenizer, tokenizer.total_steps - 1)  # interrupted: resume
    assert pipeline.run_stage(tokenizer, workdir)["call"] == 1
    assert "training" in capsys.readouterr().out
    assert pipeline.run_stage(tokenizer, workdir)["call"] == 1  # now finished: reused
    stray = tmp_path / "run" / "stray.txt"
    stray.write_text("old")
    assert pipeline.run_stage(tokenizer, workdir, restart=True)["call"] == 2
    assert not stray.exists()  # restart wiped the workdir first
    assert len(fake_loop.calls) == 2


def test_run_stage_refuses_to_mix_configs(tmp_path, configs, fake_loop):
    tokenizer, _ = configs
    workdir = str(tmp_path / "run")
    _write_run(workdir, tokenizer, tokenizer.total_steps)
    other = pipeline.configs_for("fsq", "tiny", {"total_steps": 7,
                                                 "quantizer.fsq.levels": (5, 3)})[0]
    with pytest.raises(ValueError, match=r"different config.*quantizer\.fsq\.levels"):
        pipeline.run_stage(other, workdir)
    assert fake_loop.calls == []
    assert pipeline.run_stage(other, workdir, restart=True)["call"] == 1


def test_run_maskgit_wires_stage_two_to_stage_one(tmp_path, configs, fake_loop, capsys):
    tokenizer, transformer = configs
    run = pipeline.run_maskgit(tokenizer, transformer, str(tmp_path))
    assert isinstance(run, pipeline.MaskGITRun)
    assert run.tokenizer_dir == str(tmp_path / "tokenizer")
    assert run.transformer_dir == str(tmp_path / "transformer")
    (c1, d1), (c2, d2) = fake_loop.calls
    assert (d1, d2) == (run.tokenizer_dir, run.transformer_dir)
    assert c1 is tokenizer and c2.tokenizer_workdir == run.tokenizer_dir
    assert transformer.tokenizer_workdir != run.tokenizer_dir  # the caller's config is untouched
    assert run.tokenizer_results["call"] == 1 and run.transformer_results["call"] == 2
    assert not run.reused
    capsys.readouterr()

    again = pipeline.run_maskgit(tokenizer, transformer, str(tmp_path))
    assert len(fake_loop.calls) == 2 and again.reused
    assert dataclasses.replace(again, reused=False) == run
    assert capsys.readouterr().out.count("reusing") == 2

    # A retrained stage I invalidates stage II even though its config is unchanged.
    os.remove(tmp_path / "tokenizer" / "results.json")
    pipeline.run_maskgit(tokenizer, transformer, str(tmp_path))
    assert [d for _, d in fake_loop.calls[2:]] == [run.tokenizer_dir, run.transformer_dir]


def test_a_stopped_stage_raises_and_stage_two_waits(tmp_path, configs, monkeypatch):
    from fsq_jax import train

    calls = []

    def stopped_loop(config, workdir):
        calls.append(workdir)
        return {"step": 3, "preempted": True}

    monkeypatch.setattr(train, "train_and_evaluate", stopped_loop)
    tokenizer, transformer = configs
    with pytest.raises(pipeline.StagePreemptedError, match="step 3"):
        pipeline.run_maskgit(tokenizer, transformer, str(tmp_path))
    assert calls == [str(tmp_path / "tokenizer")]
