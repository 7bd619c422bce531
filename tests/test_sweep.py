"""The codebook-size sweep: presets, the run plan, CSV and plot writing, and (slow) a miniature
sweep end to end."""

import csv
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs.sweeps import codebook_size
from fsq_jax.config_lib import RECOMMENDED_LEVELS
from fsq_jax.reporting import sweeps
from maskgit import pipeline, sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _fixture_rows():
    rows = []
    for log2_size, vq_usage in [(4, 1.0), (8, 0.7), (12, 0.2)]:
        for quantizer in ("vq", "fsq"):
            levels = RECOMMENDED_LEVELS[log2_size] if quantizer == "fsq" else ()
            size = int(np.prod(levels)) if levels else 2**log2_size
            usage = vq_usage if quantizer == "vq" else 0.99
            rows.append({
                "quantizer": quantizer, "log2_size": log2_size, "codebook_size": size,
                "levels": "x".join(map(str, levels)), "recon_fid": 50.0 - log2_size,
                "sampling_fid": float("nan") if log2_size == 12 else 60.0,
                "usage": usage, "used_codes": round(usage * size),
                "compression_bits": 10.0 * log2_size, "bits_per_token": log2_size / 6.4,
                "uniform_bits": 64.0 * math.log2(size), "psnr": 20.0,
                "tokenizer_dir": f"runs/{quantizer}/tokenizer",
                "transformer_dir": f"runs/{quantizer}/transformer",
            })
    return rows


def test_tiny_and_paper_presets():
    tiny = codebook_size.get_config("tiny")
    assert tiny.maskgit_size == "tiny" and tuple(tiny.quantizers) == ("vq", "fsq")
    assert tuple(tiny.log2_sizes) == (4, 6, 8, 10, 12)
    assert codebook_size.get_config(None).preset == "tiny"
    paper = codebook_size.get_config("paper")
    assert paper.maskgit_size == "paper"
    assert tuple(paper.log2_sizes) == (4, 6, 8, 9, 10, 11, 12, 14, 16)
    assert paper.tokenizer.data.image_size == paper.transformer.data.image_size == 128
    with pytest.raises(ValueError, match="preset"):
        codebook_size.get_config("huge")


def test_small_preset_spans_table_1s_sizes_with_enough_tokens_to_count_usage():
    small = codebook_size.get_config("small")
    assert small.maskgit_size == "tiny" and small.preset == "small"
    assert tuple(small.log2_sizes) == (6, 8, 10, 12, 14)
    assert small.tokenizer.total_steps > codebook_size.get_config("tiny").tokenizer.total_steps
    tokens = small.usage.num_images * (32 // 4) ** 2  # 8x8 tokens per 32x32 image
    assert tokens >= 16 * 2 ** max(small.log2_sizes)  # every code can be seen many times
    assert small.tokenizer.evaluators.num_images == small.transformer.evaluators.num_images


def test_sizes_come_from_the_quantizer_presets_table():
    run = sweep.RunSpec("fsq", 8, 240, (8, 6, 5), "fsq_log2size08")
    overrides = sweep.run_overrides(codebook_size.get_config("tiny"), run)
    assert overrides["tokenizer.quantizer.fsq.levels"] == (8, 6, 5)
    run = sweep.RunSpec("vq", 12, 4096, (), "vq_log2size12")
    assert sweep.run_overrides(codebook_size.get_config("tiny"), run)[
        "tokenizer.quantizer.vq.codebook_size"] == 4096


@pytest.mark.parametrize("field, value, match", [
    ("quantizers", ("vq", "pq"), "quantizers"),
    ("log2_sizes", (4, 5), "log2_sizes: no recommended FSQ levels for 2\\^5"),
    ("log2_sizes", (), "log2_sizes"),
])
def test_check_config_names_the_field(field, value, match):
    config = codebook_size.get_config("tiny")
    config[field] = value
    with pytest.raises(ValueError, match=match):
        sweep.check_config(config)
    config = codebook_size.get_config("tiny")
    config.compression.num_steps = 0
    with pytest.raises(ValueError, match=r"compression\.num_steps"):
        sweep.check_config(config)


def test_coarse_to_fine_order():
    assert sweeps.coarse_to_fine((16, 4, 8, 6, 10, 12, 14)) == [4, 16, 10, 6, 12, 8, 14]
    assert sweeps.coarse_to_fine((8, 4)) == [4, 8]
    assert sorted(sweeps.coarse_to_fine(range(4, 17))) == list(range(4, 17))


@pytest.mark.parametrize("preset", ["tiny", "small", "paper"])
def test_plan_builds_valid_configs_for_every_run(preset):
    config = codebook_size.get_config(preset)
    runs = sweep.plan(config)
    assert len(runs) == 2 * len(config.log2_sizes)
    assert len({run.name for run in runs}) == len(runs)
    for run in runs:
        overrides = sweep.run_overrides(config, run)
        tokenizer, transformer = pipeline.configs_for(run.quantizer, config.maskgit_size,
                                                      overrides)
        if run.quantizer == "fsq":
            assert tuple(tokenizer.quantizer.fsq.levels) == RECOMMENDED_LEVELS[run.log2_size]
            assert run.codebook_size == np.prod(RECOMMENDED_LEVELS[run.log2_size])
        else:
            assert tokenizer.quantizer.vq.codebook_size == run.codebook_size == 2**run.log2_size
        if preset == "tiny":
            assert tokenizer.total_steps == config.tokenizer.total_steps
            assert transformer.model.num_layers == config.transformer.model.num_layers


def test_overrides_from_the_command_line(tmp_path):
    """scripts/sweep.py takes ml_collections overrides of the sweep config and of its stage
    sections; --dry_run prints the plan with every override applied and checked."""
    command = [sys.executable, str(ROOT / "scripts" / "sweep.py"), "--dry_run",
               "--workdir", str(tmp_path), "--config.log2_sizes=(4,10)",
               "--config.tokenizer.total_steps=9", "--config.tokenizer.loss.r1_weight=0.0",
               "--config.transformer.batch_size=8"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if "codes, tokenizer" in line]
    assert [line.split(":")[0] for line in lines] == ["vq_log2size04", "fsq_log2size04",
                                                      "vq_log2size10", "fsq_log2size10"]
    assert all("tokenizer 9 steps x 16" in line and "transformer 300 steps x 8" in line
               for line in lines)
    bad = subprocess.run([*command[:5], "--config.log2_sizes=(4,5)"], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1] == (
        "config error: log2_sizes: no recommended FSQ levels for 2^5; Table 1 has 2^k for k in "
        "[4, 6, 8, 9, 10, 11, 12, 14, 16]")


def test_write_csv_has_one_row_per_run_and_every_column(tmp_path):
    rows = _fixture_rows()
    path = tmp_path / "sweep.csv"
    sweeps.write_csv(rows, str(path))
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == sweeps.CSV_COLUMNS
        raw = list(reader)
    assert len(raw) == 6
    assert raw[1]["quantizer"] == "fsq" and raw[1]["levels"] == "5x3"
    assert raw[5]["sampling_fid"] == ""  # NaN is written as an empty cell
    back = sweeps.read_csv(str(path))
    assert back[3]["codebook_size"] == 240 and back[2]["usage"] == pytest.approx(0.7)
    assert math.isnan(back[4]["sampling_fid"])
    with pytest.raises(ValueError, match="quantizer"):
        sweeps.write_csv([{"log2_size": 4}], str(path))


def test_plot_writes_the_four_panel_png(tmp_path):
    path = tmp_path / "sweep.png"
    sweeps.plot(_fixture_rows(), str(path), title="fixture")
    image = np.asarray(Image.open(path))
    height, width = image.shape[:2]
    assert width > 3 * height  # four panels side by side
    assert image.std() > 10  # not blank


@pytest.mark.slow
def test_miniature_sweep_end_to_end(tmp_path, capsys):
    """Two sizes, both quantizers, a handful of steps, FID off: trains all eight stages,
    measures usage and compression cost, and writes the CSV and the PNG; a re-run reuses."""
    config = codebook_size.get_config("tiny")
    config.update(log2_sizes=(4, 6))
    config.usage.update(num_images=32, batch_size=16)
    config.compression.update(num_images=8, batch_size=8, num_steps=4)
    stage = {"total_steps": 2, "batch_size": 8, "eval_batch_size": 8, "eval_steps": 1,
             "log_every": 1, "evaluators": {"fid": False, "num_images": 8, "batch_size": 8}}
    config.tokenizer.update(stage)
    config.tokenizer.update({"model": {"filters": 8, "embedding_dim": 16, "norm_groups": 4},
                             "discriminator": {"max_filters": 16}})
    config.transformer.update(stage)
    config.transformer.model.update(num_layers=1, hidden_size=16, num_heads=2, mlp_dim=32)
    config.transformer.optimizer.warmup_steps = 0
    workdir = tmp_path / "sweep"
    rows = sweep.run_sweep(config, str(workdir))
    assert len(rows) == 4
    table = sweeps.read_csv(str(workdir / "sweep.csv"))
    assert {(r["quantizer"], r["log2_size"]) for r in table} == {
        ("vq", 4), ("fsq", 4), ("vq", 6), ("fsq", 6)}
    for row in table:
        assert 0.0 < row["usage"] <= 1.0 and 1 <= row["used_codes"] <= row["codebook_size"]
        assert 0.0 < row["compression_bits"] < 2 * row["uniform_bits"]
        assert math.isnan(row["recon_fid"]) and math.isnan(row["sampling_fid"])  # FID off
        assert pathlib.Path(row["transformer_dir"], "results.json").exists()
    assert np.asarray(Image.open(workdir / "sweep.png")).shape[1] > 0
    out = capsys.readouterr().out
    assert "[4/4]" in out and "elapsed" in out

    again = sweep.run_sweep(config, str(workdir))
    assert capsys.readouterr().out.count("reusing") == 8
    assert [r["compression_bits"] for r in again] == [r["compression_bits"] for r in rows]


@pytest.mark.slow
def test_runs_trained_side_by_side_equal_runs_trained_in_turn(tmp_path):
    """`scripts/sweep.py --jobs 2` trains each run in a process of its own (lines prefixed with
    the run's name) and writes the same table as one process training them in turn."""
    overrides = {"log2_sizes": "(4,6)", "quantizers": "('fsq',)",
                 "usage.num_images": 32, "usage.batch_size": 16,
                 "compression.num_images": 8, "compression.batch_size": 8,
                 "compression.num_steps": 4}
    for stage in ("tokenizer", "transformer"):
        overrides.update({f"{stage}.total_steps": 2, f"{stage}.batch_size": 8,
                          f"{stage}.eval_batch_size": 8, f"{stage}.log_every": 1,
                          f"{stage}.evaluators.fid": False, f"{stage}.evaluators.num_images": 8,
                          f"{stage}.evaluators.batch_size": 8})
    overrides.update({"transformer.model.num_layers": 1,
                      "transformer.model.hidden_size": 16, "transformer.model.mlp_dim": 32,
                      "transformer.optimizer.warmup_steps": 0})
    workdir = tmp_path / "side_by_side"
    command = [sys.executable, str(ROOT / "scripts" / "sweep.py"), f"--workdir={workdir}",
               "--jobs=2", *[f"--config.{key}={value}" for key, value in overrides.items()]]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "training 2 runs, 2 at a time" in done.stdout
    assert "[fsq_log2size04] " in done.stdout and "[fsq_log2size06] " in done.stdout
    assert "finished fsq_log2size06" in done.stdout or "finished fsq_log2size04" in done.stdout
    side_by_side = sweeps.read_csv(str(workdir / "sweep.csv"))

    config = codebook_size.get_config("tiny")
    config.update(log2_sizes=(4, 6), quantizers=("fsq",))
    for key, value in overrides.items():
        if key not in ("log2_sizes", "quantizers"):
            section, _, field = key.rpartition(".")
            node = config
            for part in section.split("."):
                node = node[part]
            node[field] = value
    in_turn = sweep.run_sweep(config, str(tmp_path / "in_turn"))
    assert [r["log2_size"] for r in side_by_side] == [r["log2_size"] for r in in_turn] == [4, 6]
    for a, b in zip(side_by_side, in_turn, strict=True):
        for key in ("usage", "used_codes", "compression_bits", "psnr"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-3), key  # CSV: 3 decimals


def _trend_rows(vq_fids, fsq_fids, vq_usage, fsq_usage, sizes=(6, 8, 10, 12, 14)):
    rows = []
    for size, vq_fid, fsq_fid, vq_use, fsq_use in zip(sizes, vq_fids, fsq_fids, vq_usage,
                                                       fsq_usage, strict=True):
        for quantizer, fid, usage in (("vq", vq_fid, vq_use), ("fsq", fsq_fid, fsq_use)):
            rows.append({"quantizer": quantizer, "log2_size": size, "codebook_size": 2**size,
                         "used_codes": round(usage * 2**size), "usage": usage,
                         "recon_fid": fid, "sampling_fid": fid + 50, "bits_per_token": size / 2,
                         "psnr": 25.0})
    return rows


def test_the_report_checks_figure_3s_findings_on_the_numbers():
    paper_like = _trend_rows(vq_fids=(300, 280, 270, 272, 275), fsq_fids=(300, 270, 250, 240, 230),
                             vq_usage=(1, 1, 0.9, 0.3, 0.05), fsq_usage=(1, 1, 1, 0.98, 0.95))
    assert [holds for _, holds, _ in sweeps.trends(paper_like)] == [True, True, True, True]
    # FSQ not monotonic, FSQ's usage at 2^14 too low, VQ improving faster than FSQ.
    unlike = _trend_rows(vq_fids=(300, 280, 270, 240, 200), fsq_fids=(300, 270, 250, 260, 240),
                         vq_usage=(1, 1, 0.9, 0.3, 0.05), fsq_usage=(1, 1, 1, 0.98, 0.5))
    checks = sweeps.trends(unlike)
    assert [holds for _, holds, _ in checks] == [True, False, False, False]
    assert checks[0][2] == "2^12: 30.0%, 2^14: 5.0%" and checks[1][2] == "2^12: 98.0%, 2^14: 50.0%"
    assert "250.0 (2^10) -> 260.0 (2^12)" in checks[2][2]
    assert "VQ's FID 270.0 -> 200.0 (-70.0), FSQ's 250.0 -> 240.0 (-10.0)" in checks[3][2]

    text = sweeps.report(unlike, "small", "python scripts/sweep.py ...", 2712.4, 2)
    assert "![codebook-size study](sweep.png)" in text
    assert "| 14 | 5.0% (819/16384) | 50.0% (8192/16384) | 200.0 | 240.0 |" in text
    assert text.count("**does not show**") == 3 and text.count("**shows**") == 1
    assert "10 runs in 45 min 12 s wall, 2 at a time" in text


def test_the_largest_sizes_training_curves_are_drawn_from_their_metrics(tmp_path):
    rows = _trend_rows(vq_fids=(1,) * 5, fsq_fids=(1,) * 5, vq_usage=(1,) * 5, fsq_usage=(1,) * 5)
    assert sweeps.plot_largest_sizes(rows, str(tmp_path)) is None  # no metrics.csv anywhere
    for row in rows:
        run = tmp_path / f"{row['quantizer']}{row['log2_size']}" / "tokenizer"
        run.mkdir(parents=True)
        row["tokenizer_dir"] = str(run)
        (run / "metrics.csv").write_text(
            "step,train/quantizer/perplexity,train/reconstruction_loss,train/other\n"
            f"250,{row['log2_size'] * 10},0.04,1\n500,{row['log2_size'] * 12},0.02,2\n")
    assert sweeps.plot_largest_sizes(rows, str(tmp_path)) == sweeps.CURVES_FILE
    image = np.asarray(Image.open(tmp_path / sweeps.CURVES_FILE))
    assert image.shape[1] > image.shape[0] and image.std() > 10  # two panels side by side
    text = sweeps.report(rows, "small", "cmd", 60.0, 2, curves_picture=sweeps.CURVES_FILE)
    assert f"![largest codebooks over training]({sweeps.CURVES_FILE})" in text
