"""scripts/tables.py on fixture run directories: every run a row, with its dataset, resolution,
steps and codebook size, beside the paper's rows; nothing dropped silently."""

import json
import os
import subprocess
import sys

import pytest

from fsq_jax.reporting import collect

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENES = {"source": "scenes", "image_size": 32}
QUANTIZERS = {"vq": {"name": "vq", "vq": {"codebook_size": 256, "dim": 8}},
              "fsq": {"name": "fsq", "fsq": {"levels": [8, 6, 5]}}}


def _write_run(path, config, results, mtime=None):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    results_path = os.path.join(path, "results.json")
    with open(results_path, "w") as f:
        json.dump(results, f)
    if mtime is not None:
        os.utime(results_path, (mtime, mtime))


def _maskgit(root, name, fid, usage, data=SCENES, mtime=None):
    tokenizer = os.path.join(root, "tokenizer")
    _write_run(tokenizer, {"task": "maskgit.tasks:TokenizerTask", "data": data,
                           "quantizer": QUANTIZERS[name]},
               {"step": 100, "evaluators": {"codebook/usage": usage}})
    _write_run(os.path.join(root, "transformer"),
               {"task": "maskgit.tasks:TransformerTask", "tokenizer_workdir": tokenizer,
                "data": data},
               {"step": 200, "evaluators": {"sampling/fid": fid, "sampling/precision": 0.5,
                                            "sampling/recall": 0.4}}, mtime=mtime)


def _fixture_runs(root):
    _maskgit(os.path.join(root, "maskgit", "vq"), "vq", 41.5, 0.62)
    _maskgit(os.path.join(root, "maskgit", "fsq"), "fsq", 40.25, 1.0, mtime=2_000_000_000)
    # A second FSQ run of the same setting, finished earlier, and one on an image folder.
    _maskgit(os.path.join(root, "maskgit", "fsq_again"), "fsq", 45.0, 0.9, mtime=1_000_000_000)
    _maskgit(os.path.join(root, "maskgit", "fsq_flowers"), "fsq", 30.0, 0.95,
             data={"source": "folder:/data/flowers", "image_size": 64})
    stage2 = {"task": "uvim.tasks:Stage2Task", "output": {"name": "depth"},
              "model": {"with_context": True}, "data": SCENES}
    _write_run(os.path.join(root, "uvim", "depth_fsq"),
               {**stage2, "quantizer": {"name": "fsq", "fsq": {"levels": [8, 5, 5, 5]}}},
               {"step": 50, "evaluators": {"uvim/rmse": 0.7, "uvim/codebook_usage": 0.9}})
    _write_run(os.path.join(root, "uvim", "depth_vq_nosplit"),
               {**stage2, "quantizer": {"name": "vq", "vq": {"split_codes": False}}},
               {"step": 50, "evaluators": {"uvim/rmse": 0.8, "uvim/codebook_usage": 0.05}})
    _write_run(os.path.join(root, "uvim", "panoptic_fsq_nocontext"),
               {"task": "uvim.tasks:Stage2Task", "output": {"name": "panoptic"},
                "model": {"with_context": False}, "quantizer": {"name": "fsq"},
                "data": {"source": "tfds:coco/2017_panoptic", "image_size": 512}},
               {"step": 50, "evaluators": {"uvim/pq": 12.5}})
    # Unfinished or foreign directories: the empty one is no run, the autoencoder is in no table.
    os.makedirs(os.path.join(root, "empty"), exist_ok=True)
    _write_run(os.path.join(root, "autoencoder"), {"task": "fsq_jax.tasks:AutoencoderTask"},
               {"step": 3})


def test_collect_keeps_every_run_and_its_setting(tmp_path):
    _fixture_runs(str(tmp_path))
    runs = list(collect.find_runs([str(tmp_path)]))
    assert len(runs) == 12
    found = collect.collect(runs)
    # Every transformer run is a row (in path order), none dropped for sharing a setting.
    assert [(name, row.metrics["fid"]) for name, row in found.maskgit] == [
        ("fsq", 40.25), ("fsq", 45.0), ("fsq", 30.0), ("vq", 41.5)]
    by_fid = {row.metrics["fid"]: row for _, row in found.maskgit}
    assert by_fid[41.5].metrics == {"fid": 41.5, "precision": 0.5, "recall": 0.4, "usage": 0.62}
    assert by_fid[40.25].setting == collect.Setting("procedural scenes", 32, "100 + 200", 240)
    assert by_fid[41.5].setting.codebook_size == 256
    assert by_fid[30.0].setting.dataset == "folder flowers"
    assert by_fid[40.25].checkpoint.endswith(os.path.join("fsq", "transformer", "checkpoints",
                                                          "200"))
    uvim = dict(found.uvim)
    assert set(uvim) == {("depth", "fsq"), ("depth", "vq_nosplit"),
                         ("panoptic_nocontext", "fsq")}
    assert uvim[("depth", "fsq")].setting == collect.Setting("procedural scenes", 32, "— + 50",
                                                             1000)
    assert uvim[("panoptic_nocontext", "fsq")].setting.dataset == "COCO panoptic"
    assert uvim[("depth", "vq_nosplit")].metrics == {"value": 0.8, "usage": 0.05}
    assert len(found.stage_one) == 4  # the tokenizers behind the MaskGIT rows
    assert [os.path.basename(run.workdir) for run in found.other] == ["autoencoder"]
    assert found.hidden == []


def test_newest_only_collapses_runs_of_one_setting_and_counts_them(tmp_path):
    _fixture_runs(str(tmp_path))
    found = collect.collect(list(collect.find_runs([str(tmp_path)])), newest_only=True)
    fsq = [row for name, row in found.maskgit if name == "fsq"]
    scenes = [row for row in fsq if row.setting.dataset == "procedural scenes"]
    assert [(row.metrics["fid"], row.others) for row in scenes] == [(40.25, 1)]
    assert [row.others for row in fsq if row.setting.dataset == "folder flowers"] == [0]
    assert [os.path.basename(os.path.dirname(run.workdir)) for run in found.hidden] == [
        "fsq_again"]


def _script(*args, cwd=REPO):
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", "tables.py"), *args],
                          capture_output=True, text=True, cwd=cwd)


def test_tables_script_writes_the_expected_markdown(tmp_path):
    _fixture_runs(str(tmp_path / "runs"))
    out = tmp_path / "tables.md"
    completed = _script("--runs", str(tmp_path / "runs"), "--out", str(out))
    assert completed.returncode == 0, completed.stderr[-2000:]
    text = out.read_text()
    assert completed.stdout.strip() == text.strip()
    lines = text.splitlines()
    assert lines[0] == (f"Runs found: 12 under {tmp_path / 'runs'}: 4 MaskGIT and 3 UViM rows "
                        "below, 4 stage-I runs behind them, 1 in no table.")
    vq_row = next(line for line in lines if line.startswith("| MaskGIT VQ (ours)"))
    assert vq_row.startswith("| MaskGIT VQ (ours) | procedural scenes | 32² | 100 + 200 | 256 | "
                             "41.50 | 0.500 | 0.400 | 62.0% | `")
    fsq_rows = [line for line in lines if line.startswith("| MaskGIT FSQ (ours)")]
    assert [row.split(" | ")[5] for row in fsq_rows] == ["40.25", "45.00", "30.00"]
    assert "| MaskGIT FSQ (paper) | ImageNet | 256² | 1M + 2.5M | 1000 | 4.53 | 0.864 | 0.453 | " \
           "100.0% | the paper |" in text
    depth_rows = [line for line in lines if line.startswith("| depth (RMSE ↓)")]
    assert [row.split(" | ")[1:4] for row in depth_rows] == [
        ["VQ (paper)", "NYU Depth v2", "512²"], ["FSQ (paper)", "NYU Depth v2", "512²"],
        ["FSQ (ours)", "procedural scenes", "32²"]]
    assert depth_rows[2].split(" | ")[6:8] == ["0.700", "90.0%"]
    nosplit = next(line for line in lines if "VQ, no splitting (ours)" in line)
    assert nosplit.split(" | ")[6:8] == ["0.800", "5.0%"]
    nocontext = next(line for line in lines if "without image context" in line
                     and "(ours)" in line)
    assert nocontext.split(" | ")[2:4] == ["COCO panoptic", "512²"]
    assert lines[-1] == f"- `{tmp_path / 'runs' / 'autoencoder'}` (fsq_jax.tasks:AutoencoderTask)"


def test_tables_script_newest_says_what_it_left_out(tmp_path):
    _fixture_runs(str(tmp_path / "runs"))
    completed = _script("--runs", str(tmp_path / "runs"), "--newest")
    assert completed.returncode == 0, completed.stderr[-2000:]
    lines = completed.stdout.splitlines()
    assert lines[0].endswith("1 in no table, 1 older runs of a shown setting (without --newest: "
                             "all).")
    fsq_rows = [line for line in lines if line.startswith("| MaskGIT FSQ (ours)")]
    assert len(fsq_rows) == 2
    assert "newest of 2 runs of this setting" in fsq_rows[0]


def test_tables_script_names_a_missing_directory(tmp_path):
    completed = _script("--runs", str(tmp_path / "nope"))
    assert completed.returncode == 1
    assert "nope" in completed.stderr and "does not exist" in completed.stderr


@pytest.mark.parametrize("source, label", [("scenes", "procedural scenes"),
                                           ("tfds:imagenet2012", "ImageNet"),
                                           ("tfds:nyu_depth_v2", "NYU Depth v2"),
                                           ("tfds:cifar10", "cifar10"),
                                           ("folder:/data/my_photos/", "folder my_photos")])
def test_dataset_labels(source, label):
    assert collect.dataset_label(source) == label


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
