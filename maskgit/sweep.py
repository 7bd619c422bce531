"""The codebook-size study (FSQ paper, Figure 3): VQ vs FSQ MaskGIT runs over codebook sizes.

For each quantizer and log2 codebook size of a sweep config (configs/sweeps/codebook_size.py),
trains stage I and stage II (finished runs are reused), then measures codebook usage from tokens
and the compression cost, and writes `<workdir>/sweep.csv` and the 4-panel `<workdir>/sweep.png`
(`fsq_jax.reporting.sweeps`). `scripts/sweep.py` is its command line.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import ml_collections
import numpy as np

from fsq_jax import config_lib, quantizers, run_dir
from fsq_jax import images as image_lib
from fsq_jax.eval.evaluators import CodebookUsageEvaluator
from fsq_jax.quantizers import STATE_COLLECTION
from fsq_jax.reporting import sweeps
from fsq_jax.train import actions
from fsq_jax.train.evaluation import context_for
from fsq_jax.train.frozen import load_frozen
from maskgit import compression, pipeline, tokenizer

MEASUREMENTS_FILE = "measurements.json"
TIMING_FILE = "timing.json"  # wall time of the invocation that trained the sweep's runs
QUANTIZERS = ("vq", "fsq")
ORDERS = compression.ORDERS


@dataclass(frozen=True)
class RunSpec:
    """One point of the sweep: a quantizer at a target codebook size 2^log2_size."""

    quantizer: str
    log2_size: int
    codebook_size: int
    levels: tuple[int, ...]  # FSQ levels, () for VQ
    name: str  # sub-directory of the sweep workdir


def check_config(config: ml_collections.ConfigDict) -> None:
    """ValueError naming the first bad field of a sweep config."""
    if not config.quantizers:
        raise ValueError("quantizers: must list at least one of 'vq', 'fsq'")
    for quantizer in config.quantizers:
        if quantizer not in QUANTIZERS:
            raise ValueError(f"quantizers: unknown quantizer {quantizer!r}; one of {QUANTIZERS}")
    if not config.log2_sizes:
        raise ValueError("log2_sizes: must list at least one size")
    for log2_size in config.log2_sizes:
        if not 1 <= log2_size <= 20:
            raise ValueError(f"log2_sizes: {log2_size} is outside [1, 20]")
        if "fsq" in config.quantizers:
            try:
                config_lib.fsq_levels(log2_size)
            except ValueError as error:
                raise ValueError(f"log2_sizes: {error}") from None
    for section in ("usage", "compression"):
        for field in ("num_images", "batch_size"):
            if config[section][field] < 1:
                raise ValueError(f"{section}.{field} = {config[section][field]}: must be >= 1")
    if config.compression.num_steps < 1:
        raise ValueError(f"compression.num_steps = {config.compression.num_steps}: must be >= 1")
    if config.compression.order not in ORDERS:
        raise ValueError(f"compression.order = {config.compression.order!r}: one of {ORDERS}")
    if not config.compression.alpha > 0:
        raise ValueError(f"compression.alpha = {config.compression.alpha}: must be > 0")


def plan(config: ml_collections.ConfigDict) -> list[RunSpec]:
    """The runs of a sweep config, sizes coarse to fine (`sweeps.coarse_to_fine`), quantizers in
    the config's order at each size."""
    check_config(config)
    runs = []
    for log2_size in sweeps.coarse_to_fine(config.log2_sizes):
        for quantizer in config.quantizers:
            levels = config_lib.fsq_levels(log2_size) if quantizer == "fsq" else ()
            size = int(np.prod(levels)) if levels else 2**log2_size
            runs.append(RunSpec(quantizer, log2_size, size, levels,
                                f"{quantizer}_log2size{log2_size:02d}"))
    return runs


def run_overrides(config: ml_collections.ConfigDict, run: RunSpec) -> dict[str, Any]:
    """Every override of one run for `maskgit.pipeline.configs_for`, stage-prefixed: the sweep
    config's stage sections and the run's codebook size (the presets table's sizing rule)."""
    overrides = config_lib.flatten(config.tokenizer, "tokenizer.")
    overrides.update(config_lib.flatten(config.transformer, "transformer."))
    for field, value in config_lib.sized(run.quantizer, run.log2_size).items():
        overrides[f"tokenizer.quantizer.{run.quantizer}.{field}"] = value
    return overrides


def describe(config: ml_collections.ConfigDict) -> list[str]:
    """One line per run: its name, codebook and both stages' steps and batch sizes (every
    override applied and the stage configs checked, nothing trained)."""
    from fsq_jax import train

    lines = []
    for run in plan(config):
        tokenizer_config, transformer_config = pipeline.configs_for(
            run.quantizer, config.maskgit_size, run_overrides(config, run))
        train.validate(tokenizer_config)
        lines.append(f"{run.name}: {run.codebook_size} codes, tokenizer "
                     f"{tokenizer_config.total_steps} steps x {tokenizer_config.batch_size}, "
                     f"transformer {transformer_config.total_steps} steps x "
                     f"{transformer_config.batch_size}")
    return lines


def codebook_usage(tokenizer_dir: str, num_images: int, batch_size: int) -> dict[str, float]:
    """Usage of a finished stage-I run over `num_images` validation images, from tokens only.

    Returns {"usage": fraction of codes used at least once, "used_codes", "perplexity"}.
    """
    frozen = load_frozen(tokenizer_dir, "tokenizer_dir")
    variables = frozen.variables("generator", (STATE_COLLECTION,))
    model = tokenizer.build(frozen.config)
    size = quantizers.codebook_size(frozen.config.quantizer)
    tokenize = jax.jit(lambda v, images: model.apply(v, image_lib.to_float(images),
                                                     method="tokenize"))
    evaluator = CodebookUsageEvaluator(
        "usage", lambda v, batch, context: context.run(tokenize, (v,), batch["image"]), size,
        num_examples=num_images, batch_size=batch_size)
    stats = dict(evaluator.run(variables, context_for(frozen.config)))
    return {"usage": stats["usage"], "used_codes": round(stats["usage"] * size),
            "perplexity": stats["perplexity"]}


def _evaluator(results: Mapping[str, Any], key: str) -> float:
    value = (results.get("evaluators") or {}).get(key)
    return float("nan") if value is None else float(value)


def _cached_measurements(config: ml_collections.ConfigDict, maskgit_run: Any) -> dict[str, Any]:
    """Usage and compression cost of a finished run, cached in `<run>/measurements.json`
    keyed by their settings and the runs' results."""
    workdir = os.path.dirname(maskgit_run.tokenizer_dir)
    path = os.path.join(workdir, MEASUREMENTS_FILE)
    key = {"usage": config.usage.to_dict(), "compression": config.compression.to_dict(),
           "tokenizer_results": maskgit_run.tokenizer_results,
           "transformer_results": maskgit_run.transformer_results}
    key = json.loads(json.dumps(key, sort_keys=True))
    stored = run_dir.read_json(path) or {}
    if stored.get("key") == key:
        return stored["values"]
    values = codebook_usage(maskgit_run.tokenizer_dir, int(config.usage.num_images),
                            int(config.usage.batch_size))
    cc = config.compression
    values.update(compression.evaluate_workdir(
        maskgit_run.transformer_dir, num_images=int(cc.num_images),
        batch_size=int(cc.batch_size), num_steps=int(cc.num_steps), order=cc.order,
        seed=int(cc.seed), alpha=float(cc.alpha)))
    run_dir.write_json(path, {"key": key, "values": values})
    return values


def measure(config: ml_collections.ConfigDict, run: RunSpec, maskgit_run: Any
            ) -> dict[str, Any]:
    """The CSV row of one finished run."""
    cached = _cached_measurements(config, maskgit_run)
    tokenizer_eval = maskgit_run.tokenizer_results.get("eval") or {}
    return {
        "quantizer": run.quantizer, "log2_size": run.log2_size,
        "codebook_size": run.codebook_size, "levels": "x".join(map(str, run.levels)),
        "recon_fid": _evaluator(maskgit_run.tokenizer_results, "reconstruction/fid"),
        "sampling_fid": _evaluator(maskgit_run.transformer_results, "sampling/fid"),
        **{k: cached[k] for k in ("usage", "used_codes", "compression_bits", "bits_per_token",
                                  "uniform_bits")},
        "psnr": float(tokenizer_eval.get("eval/psnr", float("nan"))),
        "tokenizer_dir": maskgit_run.tokenizer_dir,
        "transformer_dir": maskgit_run.transformer_dir,
    }


def _progress_line(index: int, runs: list[RunSpec], elapsed: float, worked: float,
                   fresh: int) -> str:
    run = runs[index]
    eta = (f", ETA {actions.format_duration(worked / fresh * (len(runs) - index))}"
           if fresh else "")
    levels = f", levels {list(run.levels)}" if run.levels else ""
    return (f"[{index + 1}/{len(runs)}] {run.quantizer.upper()} 2^{run.log2_size} "
            f"({run.codebook_size} codes{levels}) - elapsed {actions.format_duration(elapsed)}"
            f"{eta}")


def _result_line(run: RunSpec, row: Mapping[str, Any], took: float) -> str:
    fmt = sweeps.format_value
    return (f"    {run.name}: recon FID {fmt(row['recon_fid']) or '-'}, sampling FID "
            f"{fmt(row['sampling_fid']) or '-'}, usage {row['usage']:.1%} "
            f"({row['used_codes']}/{row['codebook_size']}), compression "
            f"{row['bits_per_token']:.3f} bits/token ({row['compression_bits']:.1f} bits/image; "
            f"uniform {math.log2(row['codebook_size']):.3f}) ({actions.format_duration(took)})")


def run_sweep(config: ml_collections.ConfigDict, workdir: str, *, restart: bool = False,
              log: Callable[[str], None] = print, parallel: int = 1,
              job_command: Callable[[str], list[str]] | None = None,
              only: str | None = None, command: str | None = None) -> list[dict[str, Any]]:
    """Trains/reuses every run of `config` under `workdir`, writes sweep.csv and sweep.png
    after each run (so partial sweeps leave a plot), returns the rows.

    `parallel` > 1 trains the runs that many at a time, each in a process of its own started
    with `job_command(run_name)` (the sweep command told to do that run only: `only`), then
    collects them here in the plot's order. `only` trains and measures one run and writes
    no sweep outputs (what each of those processes does). At the end `report.md` gives the
    table, Figure 3's findings checked on it and the time (`command` is the command it names).
    """
    runs = plan(config)
    sweep_started = time.time()
    if only is not None:
        runs = [run for run in runs if run.name == only]
        if not runs:
            raise ValueError(f"no run named {only!r} in this sweep; its runs: "
                             f"{', '.join(run.name for run in plan(config))}")
    os.makedirs(workdir, exist_ok=True)
    if parallel > 1 and only is None:
        if job_command is None:
            raise ValueError("parallel runs need job_command (the command of one run)")
        _train_concurrently(runs, parallel, job_command, log)
        restart = False  # every run was just trained (or reused) by the jobs
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    worked, fresh = 0.0, 0  # time spent on runs that were not already finished, and how many
    for index, run in enumerate(runs):
        log(_progress_line(index, runs, time.monotonic() - started, worked, fresh))
        run_started = time.monotonic()
        tokenizer_config, transformer_config = pipeline.configs_for(
            run.quantizer, config.maskgit_size, run_overrides(config, run))
        maskgit_run = pipeline.run_maskgit(tokenizer_config, transformer_config,
                                           os.path.join(workdir, run.name), restart=restart)
        rows.append(measure(config, run, maskgit_run))
        took = time.monotonic() - run_started
        if took > 30:  # a reused run takes seconds; only real work predicts the rest
            worked, fresh = worked + took, fresh + 1
        log(_result_line(run, rows[-1], took))
        if only is None:
            sweeps.write_outputs(rows, workdir, config.preset)
    if only is None:
        wall = _wall_time(workdir, rows, sweep_started, parallel)
        command = command or ("python scripts/sweep.py --config configs/sweeps/codebook_size.py:"
                              f"{config.preset} --workdir {workdir}")
        report_path = os.path.join(workdir, "report.md")
        with open(report_path, "w") as f:
            f.write(sweeps.report(rows, config.preset, command, wall["seconds"],
                                  wall["parallel"],
                                  curves_picture=sweeps.plot_largest_sizes(rows, workdir)))
        log(f"done in {actions.format_duration(time.time() - sweep_started)}: "
            f"{os.path.join(workdir, 'sweep.csv')}, {os.path.join(workdir, 'sweep.png')}, "
            f"{report_path}")
    return rows


def _wall_time(workdir: str, rows: list[dict[str, Any]], started: float, parallel: int
               ) -> dict[str, float]:
    """{"seconds", "parallel"} of the invocation that last trained runs of this sweep: this one
    if it wrote any run's results (then kept in `timing.json`), else the one kept there."""
    path = os.path.join(workdir, TIMING_FILE)
    if any(run_dir.results_written_since(row[key], started) for row in rows
           for key in ("tokenizer_dir", "transformer_dir")):
        timing = {"seconds": time.time() - started, "parallel": parallel}
        run_dir.write_json(path, timing)
        return timing
    return run_dir.read_json(path) or {"seconds": time.time() - started, "parallel": parallel}


def _train_concurrently(runs: list[RunSpec], parallel: int,
                        job_command: Callable[[str], list[str]],
                        log: Callable[[str], None]) -> None:
    """Every run trained and measured by its own process, `parallel` at a time."""
    from fsq_jax.train import concurrent_runs

    log(f"training {len(runs)} runs, {parallel} at a time (one process each; their lines start "
        "with the run's name)")
    jobs = [concurrent_runs.Job(run.name, job_command(run.name)) for run in runs]
    with concurrent_runs.JobPool(jobs, parallel, log=log) as pool:
        pool.wait()
