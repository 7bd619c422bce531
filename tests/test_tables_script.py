"""scripts/tables.py on fixture run directories: runs sorted into the paper's tables."""

import json
import os
import subprocess
import sys

from fsq_jax.reporting import collect

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_run(path, config, results):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(path, "results.json"), "w") as f:
        json.dump(results, f)


def _fixture_runs(root):
    for name, fid, usage in (("vq", 41.5, 0.62), ("fsq", 40.25, 1.0)):
        tokenizer = os.path.join(root, "maskgit", name, "tokenizer")
        _write_run(tokenizer, {"task": "maskgit.tasks:TokenizerTask", "quantizer": {"name": name}},
                   {"step": 100, "evaluators": {"codebook/usage": usage}})
        _write_run(os.path.join(root, "maskgit", name, "transformer"),
                   {"task": "maskgit.tasks:TransformerTask", "tokenizer_workdir": tokenizer},
                   {"step": 200, "evaluators": {"sampling/fid": fid, "sampling/precision": 0.5,
                                                "sampling/recall": 0.4}})
    stage2 = {"task": "uvim.tasks:Stage2Task", "output": {"name": "depth"},
              "model": {"with_context": True}}
    _write_run(os.path.join(root, "uvim", "depth_fsq"),
               {**stage2, "quantizer": {"name": "fsq"}},
               {"step": 50, "evaluators": {"uvim/rmse": 0.7, "uvim/codebook_usage": 0.9}})
    _write_run(os.path.join(root, "uvim", "depth_vq_nosplit"),
               {**stage2, "quantizer": {"name": "vq", "vq": {"split_codes": False}}},
               {"step": 50, "evaluators": {"uvim/rmse": 0.8, "uvim/codebook_usage": 0.05}})
    _write_run(os.path.join(root, "uvim", "panoptic_fsq_nocontext"),
               {"task": "uvim.tasks:Stage2Task", "output": {"name": "panoptic"},
                "model": {"with_context": False}, "quantizer": {"name": "fsq"}},
               {"step": 50, "evaluators": {"uvim/pq": 12.5}})
    # Unfinished or foreign directories are ignored.
    os.makedirs(os.path.join(root, "empty"), exist_ok=True)
    _write_run(os.path.join(root, "autoencoder"), {"task": "fsq_jax.tasks:AutoencoderTask"},
               {"step": 3})


def test_collect_sorts_runs_into_rows(tmp_path):
    _fixture_runs(str(tmp_path))
    runs = list(collect.find_runs([str(tmp_path)]))
    assert len(runs) == 8
    maskgit, uvim = collect.collect(runs)
    assert maskgit["vq"].metrics == {"fid": 41.5, "precision": 0.5, "recall": 0.4, "usage": 0.62}
    assert maskgit["fsq"].metrics["usage"] == 1.0
    assert maskgit["fsq"].checkpoint.endswith(os.path.join("fsq", "transformer", "checkpoints",
                                                           "200"))
    assert set(uvim) == {("depth", "fsq"), ("depth", "vq_nosplit"),
                         ("panoptic_nocontext", "fsq")}
    assert uvim[("depth", "vq_nosplit")].metrics == {"value": 0.8, "usage": 0.05}
    assert uvim[("panoptic_nocontext", "fsq")].metrics == {"value": 12.5, "usage": None}


def test_tables_script_writes_the_expected_markdown(tmp_path):
    _fixture_runs(str(tmp_path / "runs"))
    out = tmp_path / "tables.md"
    completed = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "tables.py"), "--runs",
         str(tmp_path / "runs"), "--out", str(out)],
        capture_output=True, text=True, check=True, cwd=REPO)
    text = out.read_text()
    assert completed.stdout.strip() == text.strip()
    lines = text.splitlines()
    assert lines[0] == f"Runs found: 8 under {tmp_path / 'runs'}."
    vq_row = next(line for line in lines if line.startswith("| MaskGIT VQ (ours)"))
    assert vq_row.startswith("| MaskGIT VQ (ours) | 41.50 | 0.500 | 0.400 | 62.0% | `")
    assert "| MaskGIT FSQ (paper) | 4.53 | 0.864 | 0.453 | 100.0% |" in text
    depth_row = next(line for line in lines if line.startswith("| NYU Depth v2"))
    assert depth_row.split("|")[2:6] == [" — ", " 0.700 (usage 90.0%) ",
                                         " 0.468 ± 0.012 (usage 99.0%) ",
                                         " 0.473 ± 0.012 (usage 99.0%) "]
    nosplit_row = next(line for line in lines if line.startswith("| VQ without splitting"))
    assert nosplit_row.split("|")[2] == " 0.800 (usage 5.0%) "
    nocontext = next(line for line in lines if line.startswith("| panoptic without image"))
    assert nocontext.split("|")[3] == " 12.500 "


def test_tables_script_names_a_missing_directory(tmp_path):
    completed = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "tables.py"), "--runs",
         str(tmp_path / "nope")], capture_output=True, text=True, cwd=REPO)
    assert completed.returncode == 1
    assert "nope" in completed.stderr and "does not exist" in completed.stderr


def test_a_run_evaluated_before_it_finished_is_read_from_evaluation_json(tmp_path):
    """scripts/evaluate.py leaves the training run's results.json alone and writes
    evaluation.json; a run without results.json is read from it, results.json wins otherwise."""
    config = {"task": "uvim.tasks:Stage2Task", "dense_task": {"name": "depth"}}
    _write_run(str(tmp_path / "finished"), config, {"step": 9})
    with open(tmp_path / "finished" / "evaluation.json", "w") as f:
        json.dump({"step": 5}, f)
    (tmp_path / "stopped").mkdir()
    (tmp_path / "stopped" / "config.json").write_text(json.dumps(config))
    (tmp_path / "stopped" / "evaluation.json").write_text(json.dumps({"step": 4}))
    steps = {os.path.basename(run.workdir): run.results["step"]
             for run in collect.find_runs([str(tmp_path)])}
    assert steps == {"finished": 9, "stopped": 4}
