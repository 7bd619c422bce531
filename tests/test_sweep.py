"""The codebook-size sweep: presets, the run plan, CSV and plot writing, and (slow) a miniature
sweep end to end."""

import csv
import importlib.util
import math
import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

from configs.sweeps import codebook_size
from fsq_jax.reporting.paper import RECOMMENDED_LEVELS
from maskgit import pipeline

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("sweep_script", ROOT / "scripts" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


sweep = _load_script()


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
    assert min(paper.log2_sizes) == 4 and max(paper.log2_sizes) == 16
    assert paper.tokenizer.data.image_size == paper.transformer.data.image_size == 128
    with pytest.raises(ValueError, match="preset"):
        codebook_size.get_config("huge")


def test_levels_come_from_table_1():
    assert codebook_size.fsq_levels(10) == (8, 5, 5, 5)
    assert codebook_size.fsq_levels(16) == (8, 8, 8, 5, 5, 5)
    assert codebook_size.quantizer_overrides("fsq", 8) == {"quantizer.levels": (8, 6, 5)}
    assert codebook_size.quantizer_overrides("vq", 12) == {"quantizer.codebook_size": 4096}
    with pytest.raises(ValueError, match="log2_sizes"):
        codebook_size.fsq_levels(13)
    with pytest.raises(ValueError, match="quantizers"):
        codebook_size.quantizer_overrides("lfq", 8)


@pytest.mark.parametrize("field, value, match", [
    ("quantizers", ("vq", "pq"), "quantizers"),
    ("log2_sizes", (4, 5), "log2_sizes"),
    ("log2_sizes", (), "log2_sizes"),
])
def test_check_config_names_the_field(field, value, match):
    config = codebook_size.get_config("tiny")
    config[field] = value
    with pytest.raises(ValueError, match=match):
        codebook_size.check_config(config)
    config = codebook_size.get_config("tiny")
    config.compression.num_steps = 0
    with pytest.raises(ValueError, match=r"compression\.num_steps"):
        codebook_size.check_config(config)


def test_coarse_to_fine_order():
    assert sweep.coarse_to_fine((16, 4, 8, 6, 10, 12, 14)) == [4, 16, 10, 6, 12, 8, 14]
    assert sweep.coarse_to_fine((8, 4)) == [4, 8]
    assert sorted(sweep.coarse_to_fine(range(4, 17))) == list(range(4, 17))


@pytest.mark.parametrize("preset", ["tiny", "paper"])
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
            assert tuple(tokenizer.quantizer.levels) == RECOMMENDED_LEVELS[run.log2_size]
            assert run.codebook_size == np.prod(RECOMMENDED_LEVELS[run.log2_size])
        else:
            assert tokenizer.quantizer.codebook_size == run.codebook_size == 2**run.log2_size
        if preset == "tiny":
            assert tokenizer.total_steps == config.tokenizer.total_steps
            assert transformer.model.num_layers == config.transformer.model.num_layers


def test_overrides_from_the_command_line():
    config = codebook_size.get_config("tiny")
    sweep.apply_overrides(config, ["log2_sizes=(4, 10)", "tokenizer.total_steps=9",
                                   "transformer.model.num_layers=1", "compression.order=raster",
                                   "tokenizer.loss.r1_weight=0.0"])
    assert tuple(config.log2_sizes) == (4, 10) and config.tokenizer.total_steps == 9
    assert config.compression.order == "raster"
    run = sweep.plan(config)[0]
    tokenizer, transformer = pipeline.configs_for(run.quantizer, "tiny",
                                                  sweep.run_overrides(config, run))
    assert tokenizer.loss.r1_weight == 0.0 and transformer.model.num_layers == 1
    with pytest.raises(ValueError, match="nonsense"):
        sweep.apply_overrides(config, ["nonsense=1"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        sweep.apply_overrides(config, ["log2_sizes"])


def test_write_csv_has_one_row_per_run_and_every_column(tmp_path):
    rows = _fixture_rows()
    path = tmp_path / "sweep.csv"
    sweep.write_csv(rows, str(path))
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == sweep.CSV_COLUMNS
        raw = list(reader)
    assert len(raw) == 6
    assert raw[1]["quantizer"] == "fsq" and raw[1]["levels"] == "5x3"
    assert raw[5]["sampling_fid"] == ""  # NaN is written as an empty cell
    back = sweep.read_csv(str(path))
    assert back[3]["codebook_size"] == 240 and back[2]["usage"] == pytest.approx(0.7)
    assert math.isnan(back[4]["sampling_fid"])
    with pytest.raises(ValueError, match="quantizer"):
        sweep.write_csv([{"log2_size": 4}], str(path))


def test_plot_writes_the_four_panel_png(tmp_path):
    path = tmp_path / "sweep.png"
    sweep.plot(_fixture_rows(), str(path), title="fixture")
    image = np.asarray(Image.open(path))
    height, width = image.shape[:2]
    assert width > 3 * height  # four panels side by side
    assert image.std() > 10  # not blank


@pytest.mark.slow
def test_miniature_sweep_end_to_end(tmp_path, capsys):
    """Two sizes, both quantizers, a handful of steps, FID off: trains all eight stages,
    measures usage and compression cost, and writes the CSV and the PNG; a re-run reuses."""
    config = codebook_size.get_config("tiny")
    sweep.apply_overrides(config, [
        "log2_sizes=(4, 6)", "usage.num_images=32", "usage.batch_size=16",
        "compression.num_images=8", "compression.batch_size=8", "compression.num_steps=4",
    ])
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
    table = sweep.read_csv(str(workdir / "sweep.csv"))
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
