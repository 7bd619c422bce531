"""The `make demo` report: built only from what finished runs left on disk."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from fsq_jax.reporting import demo

SCENES = {"source": "scenes", "image_size": 32}
QUANTIZERS = {"fsq": {"name": "fsq", "fsq": {"levels": [8, 6, 5]}},
              "vq": {"name": "vq", "vq": {"codebook_size": 256}}}


def _stage(root: str, name: str, evaluators: dict, eval_metrics: dict, images: dict,
           config: dict | None = None) -> str:
    workdir = os.path.join(root, name)
    os.makedirs(os.path.join(workdir, "images"))
    results = {"step": 120, "evaluators": evaluators, "eval": eval_metrics}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f)
    if config is not None:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config, f)
    # metrics.csv as the loop writes it: train rows, evaluator columns at the last step.
    with open(os.path.join(workdir, "metrics.csv"), "w") as f:
        f.write("step,train/loss,steps_per_sec,codebook/usage\n"
                "60,0.5,3.0,\n120,0.25,3.5,0.75\n")
    for relative, value in images.items():
        path = os.path.join(workdir, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(path)
    return workdir


def _results(workdir: str) -> dict:
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)


def _runs(root: str) -> dict[str, demo.QuantizerRuns]:
    runs = {}
    for name, (fid, usage) in {"fsq": (61.25, 0.984), "vq": (97.5, 0.611)}.items():
        tokenizer = _stage(
            root, f"{name}/tokenizer",
            {"reconstruction/fid": fid / 2, "codebook/usage": usage,
             "codebook/perplexity": 812.0, "codebook/entropy_bits": 9.66},
            {"eval/psnr": 25.482, "eval/reconstruction_l2": 0.0123},
            {"images/reconstructions_60.png": 10, "images/reconstructions_120.png": 20,
             "evaluation/codebook_histogram.png": 30},
            config={"task": "maskgit.tasks:TokenizerTask", "data": SCENES,
                    "quantizer": QUANTIZERS[name]},
        )
        transformer = _stage(
            root, f"{name}/transformer",
            {"sampling/fid": fid, "sampling/precision": 0.5, "sampling/recall": 0.25},
            {}, {"images/samples_120.png": 40},
            config={"task": "maskgit.tasks:TransformerTask", "data": SCENES,
                    "tokenizer_workdir": os.path.join(root, name, "tokenizer")},
        )
        runs[name] = demo.QuantizerRuns(
            tokenizer=demo.StageRun(tokenizer, f"configs/maskgit/tokenizer.py:{name},tiny",
                                    _results(tokenizer)),
            transformer=demo.StageRun(transformer,
                                      f"configs/maskgit/transformer.py:{name},tiny",
                                      _results(transformer)),
        )
    return runs


def test_report_tables_hold_the_measured_numbers(tmp_path):
    runs = _runs(str(tmp_path / "runs"))
    report = demo.render(runs, {}, timings={"fsq (both stages)": 61.4},
                         codebook_sizes={"fsq": 1000, "vq": 1024})
    lines = report.splitlines()
    fsq_row = next(x for x in lines if x.startswith("| MaskGIT FSQ (ours)"))
    # Our rows say what they were measured on, beside the paper's ImageNet rows.
    assert fsq_row.startswith("| MaskGIT FSQ (ours) | procedural scenes | 32² | 120 + 120 | 240 | "
                              "61.25 | 0.500 | 0.250 | 98.4% |")
    assert os.path.join(str(tmp_path / "runs"), "fsq/transformer", "checkpoints", "120") in fsq_row
    vq_row = next(x for x in lines if x.startswith("| MaskGIT VQ (ours)"))
    assert vq_row.startswith("| MaskGIT VQ (ours) | procedural scenes | 32² | 120 + 120 | 256 | "
                             "97.50 | 0.500 | 0.250 | 61.1% |")
    # The paper's rows stay beside ours.
    assert any(x.startswith("| MaskGIT FSQ (paper) |") for x in lines)
    tokenizer_row = next(x for x in lines if x.startswith("| FSQ | 1000 |"))
    assert tokenizer_row == ("| FSQ | 1000 | 30.62 | 98.4% | 812.00 | 9.66 | 25.48 | "
                             "`configs/maskgit/tokenizer.py:fsq,tiny` |")
    assert "| fsq (both stages) | 61 |" in lines


def test_pictures_are_the_newest_ones_and_copied(tmp_path):
    runs = _runs(str(tmp_path / "runs"))
    out = tmp_path / "report"
    out.mkdir()
    pictures = demo.collect_pictures(runs, str(out))
    assert sorted(pictures.values()) == sorted(
        f"{q}_{kind}.png" for q in ("fsq", "vq") for kind in ("reconstructions", "samples",
                                                                "codebook"))
    # reconstructions_120 (value 20) wins over reconstructions_60 (value 10).
    assert np.asarray(Image.open(out / "fsq_reconstructions.png"))[0, 0, 0] == 20
    assert np.asarray(Image.open(out / "vq_samples.png"))[0, 0, 0] == 40
    report = demo.render(runs, pictures)
    assert "![FSQ class-conditional samples (one row per class)](fsq_samples.png)" in report


def test_missing_numbers_render_as_dashes(tmp_path):
    runs = _runs(str(tmp_path / "runs"))
    empty = demo.StageRun(runs["vq"].transformer.workdir, "x", {})
    runs["vq"] = demo.QuantizerRuns(tokenizer=runs["vq"].tokenizer, transformer=empty)
    row = next(x for x in demo.render(runs, {}).splitlines()
               if x.startswith("| MaskGIT VQ (ours)"))
    assert row.split(" | ")[5:9] == ["—", "—", "—", "61.1%"]


def test_real_images_floor_is_reported(tmp_path):
    runs = _runs(str(tmp_path / "runs"))
    baseline = {"num_images": 256, "fid": 41.234, "precision": 0.75, "recall": 0.6875}
    report = demo.render(runs, {}, baseline=baseline)
    assert ("Real validation images scored exactly like the samples (256 images against the "
            "same training reference) get FID 41.23, precision 0.750 and recall 0.688") in report
    assert "Real validation images" not in demo.render(runs, {})


def test_training_curves_put_both_quantizers_on_the_same_axes(tmp_path):
    runs = _runs(str(tmp_path / "runs"))
    out = tmp_path / "report"
    out.mkdir()
    pictures = demo.training_curves(runs, str(out))
    assert pictures == {
        "tokenizer: training metrics (FSQ, VQ)": "tokenizer_curves_train.png",
        "tokenizer: evaluations over training (FSQ, VQ)": "tokenizer_curves_evaluators.png",
        "transformer: training metrics (FSQ, VQ)": "transformer_curves_train.png",
        "transformer: evaluations over training (FSQ, VQ)": "transformer_curves_evaluators.png",
    }
    for name in pictures.values():
        assert Image.open(out / name).size[0] > 300
    report = demo.render(runs, {}, curve_pictures=pictures)
    assert "### Training curves" in report
    assert ("![tokenizer: training metrics (FSQ, VQ)](tokenizer_curves_train.png)"
            in report)


def _with_results(run: demo.StageRun, **changes) -> demo.StageRun:
    results = {**run.results}
    for section, values in changes.items():
        results[section] = {**results.get(section, {}), **values}
    return demo.StageRun(run.workdir, run.config, results)


def test_summary_is_report_json_with_mean_and_spread_over_seeds(tmp_path):
    first = _runs(str(tmp_path / "a"))
    second = _runs(str(tmp_path / "b"))
    seconds = {"total": 100.0, "training": 60.0, "compilation": 10.0, "eval": 25.0,
               "images": 3.0, "checkpoint": 2.0}
    second["fsq"] = demo.QuantizerRuns(
        tokenizer=_with_results(second["fsq"].tokenizer, eval={"eval/psnr": 27.482},
                                seconds=seconds),
        transformer=_with_results(second["fsq"].transformer,
                                  evaluators={"sampling/fid": 81.25}))
    baseline = {"num_images": 256, "fid": 40.0, "precision": 0.75, "recall": 0.6875}
    report = demo.summary({"fsq": [first["fsq"], second["fsq"]], "vq": [first["vq"]]}, baseline)
    assert report["floor_fid"] == 40.0
    fsq, vq = report["fsq"], report["vq"]
    assert fsq["seeds"] == 2 and vq["seeds"] == 1
    assert fsq["psnr"] == pytest.approx(26.482)
    assert fsq["std"]["psnr"] == pytest.approx(np.sqrt(2.0))  # (25.482, 27.482), ddof 1
    assert fsq["sampling_fid"] == pytest.approx(71.25)
    assert fsq["reconstruction_fid"] == pytest.approx(30.625)
    assert fsq["usage"] == pytest.approx(0.984) and fsq["precision"] == 0.5
    assert fsq["recall"] == 0.25
    assert vq["std"]["sampling_fid"] == 0.0 and vq["sampling_fid"] == 97.5
    assert [row["psnr"] for row in fsq["per_seed"]] == [25.482, 27.482]
    # Only the second seed recorded its times: training includes compilation.
    assert fsq["seconds"] == {"tokenizer training": 70.0, "tokenizer evaluation": 25.0,
                              "tokenizer pictures and checkpoints": 5.0}
    json.dumps(report)  # report.json is plain JSON

    table = demo.headline_table(report)
    fsq_row = next(x for x in table.splitlines() if x.startswith("| FSQ |"))
    assert fsq_row == ("| FSQ | 26.48 ± 1.41 | 30.6 ± 0.0 | 71.2 ± 14.1 | 0.500 ± 0.000 | "
                       "0.250 ± 0.000 | 98.4% ± 0.0 |")
    assert "| target | ≥ 28 | ≤ 80.0 (2x floor) | ≤ 120.0 (3x floor) | ≥ 0.3 | ≥ 0.2 | — |" in table
    assert "over 2 training seeds; real-images floor FID 40.0" in table
    rendered = demo.render({"fsq": first["fsq"], "vq": first["vq"]}, {}, {"floor": 12.0},
                           baseline=baseline, headline=report)
    assert "| FSQ tokenizer evaluation | 25 |" in rendered and "| floor | 12 |" in rendered
    assert "The whole demo" not in rendered  # no wall time recorded
    timed = {**report, "wall_seconds": 545.4, "parallel_runs": 2, "runs": 4, "runs_trained": 2}
    assert ("The whole demo: 9 min 5 s wall for 4 runs (2 trained by it, 2 reused), "
            "installation excluded; 2 runs at a time, each in its own process, so the stage "
            "times above overlap.") in demo.times_table(timed)
    assert "one stage after the other" in demo.times_table({**timed, "parallel_runs": 1})


@pytest.mark.slow
def test_the_demo_trains_both_quantizers_side_by_side_and_writes_its_report(tmp_path):
    """`scripts/demo.py` end to end at a few steps: one process per quantizer (lines prefixed
    with its name), the floor scored meanwhile, then report.md and report.json from the runs;
    a second invocation reuses every stage."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    workdir = tmp_path / "demo"
    command = [sys.executable, os.path.join(root, "scripts", "demo.py"), f"--workdir={workdir}",
               "--tokenizer_steps=3", "--transformer_steps=3", "--eval_images=8", "--jobs=2"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=root, timeout=1200)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "training 2 runs, 2 at a time" in done.stdout
    assert "[fsq] " in done.stdout and "[vq] " in done.stdout
    report = json.loads((workdir / "report.json").read_text())
    assert report["parallel_runs"] == 2 and report["wall_seconds"] > 0
    assert report["floor"]["num_images"] == 8 and report["floor_fid"] > 0
    for name in ("fsq", "vq"):
        entry = report[name]
        assert entry["seeds"] == 1
        for metric in ("psnr", "reconstruction_fid", "sampling_fid", "precision", "recall",
                       "usage"):
            assert entry[metric] is not None, (name, metric)
        assert 0.0 < entry["usage"] <= 1.0 and entry["seconds"]["tokenizer training"] > 0
        assert (workdir / name / "transformer" / "results.json").exists()
    text = (workdir / "report.md").read_text()
    assert "The whole demo:" in text and "for 2 runs (2 trained by it, 0 reused)" in text
    assert report["runs"] == report["runs_trained"] == 2
    again = subprocess.run(command, capture_output=True, text=True, cwd=root, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("reusing") >= 4  # both stages of both quantizers


def test_results_written_since_tells_a_trained_run_from_a_reused_one(tmp_path):
    import time

    from fsq_jax import run_dir

    assert not run_dir.results_written_since(str(tmp_path), 0.0)  # no results at all
    (tmp_path / run_dir.RESULTS_FILE).write_text("{}")
    written = os.path.getmtime(tmp_path / run_dir.RESULTS_FILE)
    assert run_dir.results_written_since(str(tmp_path), written)
    assert not run_dir.results_written_since(str(tmp_path), time.time() + 60)
