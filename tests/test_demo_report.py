"""The `make demo` report: built only from what finished runs left on disk."""

from __future__ import annotations

import json
import os

import numpy as np
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
