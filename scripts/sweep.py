"""The codebook-size study (FSQ paper, Figure 3): VQ vs FSQ MaskGIT runs over codebook sizes.

For each quantizer and log2 codebook size of the sweep config, trains stage I and stage II
(finished runs are reused), then measures reconstruction FID, sampling FID, codebook usage and
compression cost, and writes `<workdir>/sweep.csv` and the 4-panel `<workdir>/sweep.png`.

  python scripts/sweep.py --config configs/sweeps/codebook_size.py:tiny --workdir runs/sweep
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CSV_COLUMNS = (
    "quantizer", "log2_size", "codebook_size", "levels", "recon_fid", "sampling_fid", "usage",
    "used_codes", "compression_bits", "bits_per_token", "uniform_bits", "psnr",
    "tokenizer_dir", "transformer_dir",
)
# (CSV column, panel title, y label) of the four panels, in the paper's order.
PANELS = (
    ("recon_fid", "Reconstruction FID", "FID (lower is better)"),
    ("sampling_fid", "Sampling FID", "FID (lower is better)"),
    ("usage", "Codebook usage", "fraction of codes used"),
    ("compression_bits", "Compression cost", "bits / image"),
)
QUANTIZER_STYLES = {"vq": ("VQ", "tab:blue", "o"), "fsq": ("FSQ", "tab:orange", "s")}
MEASUREMENTS_FILE = "measurements.json"


# ---------------------------------------------------------------------------------------------
# Plan.


@dataclass(frozen=True)
class RunSpec:
    """One point of the sweep: a quantizer at a target codebook size 2^log2_size."""

    quantizer: str
    log2_size: int
    codebook_size: int
    levels: tuple[int, ...]  # FSQ levels, () for VQ
    name: str  # sub-directory of the sweep workdir


def load_config(spec: str) -> Any:
    """'path/to/config.py:arg' -> that file's get_config(arg)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ValueError(f"--config {spec!r}: no such file {path!r}")
    module_spec = importlib.util.spec_from_file_location("sweep_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"--config {spec!r}: {path} has no get_config(arg)")
    return module.get_config(arg or None)


def coarse_to_fine(values: Sequence[int]) -> list[int]:
    """Both ends first, then repeatedly the middle of the largest gap, so that a sweep cut
    short already spans the whole range: (4, 6, 8, 10, 12, 14, 16) -> 4, 16, 10, 6, 12, 8, 14."""
    values = sorted(set(values))
    if len(values) <= 2:
        return values
    order = [values[0], values[-1]]
    pending = [(0, len(values) - 1)]
    while pending:
        next_pending = []
        for low, high in pending:
            if high - low < 2:
                continue
            middle = (low + high) // 2
            order.append(values[middle])
            next_pending += [(low, middle), (middle, high)]
        pending = next_pending
    return order


def plan(config: Any) -> list[RunSpec]:
    """The runs of a sweep config, sizes coarse to fine (`coarse_to_fine`), quantizers in the
    config's order at each size."""
    from configs.sweeps import codebook_size as sweep_configs

    sweep_configs.check_config(config)
    runs = []
    for log2_size in coarse_to_fine(config.log2_sizes):
        for quantizer in config.quantizers:
            levels = sweep_configs.fsq_levels(log2_size) if quantizer == "fsq" else ()
            size = int(np.prod(levels)) if levels else 2**log2_size
            runs.append(RunSpec(quantizer, log2_size, size, levels,
                                f"{quantizer}_log2size{log2_size:02d}"))
    return runs


def apply_overrides(config: Any, overrides: Sequence[str]) -> None:
    """Applies `KEY=VALUE` strings (dotted keys, Python literal values) to a sweep config, e.g.
    `log2_sizes=(4,10,16)` or `tokenizer.total_steps=100`; ValueError naming a bad one."""
    import ast

    from maskgit import pipeline

    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--override {item!r}: expected KEY=VALUE")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text  # a bare string such as order=raster
        if isinstance(value, Mapping):
            raise ValueError(f"--override {item!r}: set the fields of a section one by one")
        if pipeline.has_field(config, key):
            pipeline.set_field(config, key, value, "the sweep config")
        else:  # a new override of a stage config: tokenizer.* / transformer.* sections
            stage, _, field = key.partition(".")
            if stage not in ("tokenizer", "transformer") or not field:
                raise ValueError(f"--override {item!r}: the sweep config has no field {key!r}")
            *parents, leaf = field.split(".")
            node = config[stage]
            for part in parents:
                if part not in node:
                    node[part] = {}
                node = node[part]
            node[leaf] = value


def flatten(section: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested overrides -> dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in section.items():
        if isinstance(value, Mapping) or hasattr(value, "items"):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_overrides(config: Any, run: RunSpec) -> dict[str, Any]:
    """Every override of one run for `maskgit.pipeline.configs_for`, stage-prefixed."""
    from configs.sweeps import codebook_size as sweep_configs

    overrides = flatten(config.tokenizer, "tokenizer.")
    overrides.update(flatten(config.transformer, "transformer."))
    for key, value in sweep_configs.quantizer_overrides(run.quantizer, run.log2_size).items():
        overrides[f"tokenizer.{key}"] = value
    return overrides


# ---------------------------------------------------------------------------------------------
# Measurements beyond the runs' own results.json.


def _as_tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, Mapping):
        return {k: _as_tuples(v) for k, v in value.items()}
    return value


def codebook_usage(tokenizer_dir: str, num_images: int, batch_size: int,
                   split: str = "validation") -> dict[str, float]:
    """Usage of a finished stage-I run over `num_images` images of `split`, from tokens only.

    Returns {"usage": fraction of codes used at least once, "used_codes", "perplexity"}.
    """
    import itertools

    import jax
    import ml_collections

    from fsq_jax import codebook, data, quantizers
    from fsq_jax import images as image_lib
    from maskgit import tasks, tokenizer

    config, variables = tasks.load_tokenizer(tokenizer_dir)
    config = ml_collections.ConfigDict(_as_tuples(config.to_dict()))
    model = tokenizer.build(config)
    size = quantizers.codebook_size(config.quantizer)
    tokenize = jax.jit(lambda v, images: model.apply(v, image_lib.to_float(images),
                                                     method="tokenize"))
    counts = np.zeros(size, np.int64)
    batches = itertools.islice(data.build(config.data, split, batch_size, shuffle=False),
                               math.ceil(num_images / batch_size))
    seen = 0
    for batch in batches:
        images = batch["image"][: num_images - seen]
        seen += len(images)
        counts += codebook.counts_from_indices(np.asarray(tokenize(variables, images)), size)
    return {"usage": float(codebook.usage(counts)), "used_codes": int(np.sum(counts > 0)),
            "perplexity": float(codebook.perplexity(counts))}


def _evaluator(results: Mapping[str, Any], key: str) -> float:
    value = (results.get("evaluators") or {}).get(key)
    return float("nan") if value is None else float(value)


def measure(config: Any, run: RunSpec, maskgit_run: Any) -> dict[str, Any]:
    """The CSV row of one finished run; usage and compression cost are computed here (and
    cached in `<run>/measurements.json`, keyed by their settings and the runs' results)."""
    from maskgit import compression

    workdir = os.path.dirname(maskgit_run.tokenizer_dir)
    path = os.path.join(workdir, MEASUREMENTS_FILE)
    key = {"usage": config.usage.to_dict(), "compression": config.compression.to_dict(),
           "tokenizer_results": maskgit_run.tokenizer_results,
           "transformer_results": maskgit_run.transformer_results}
    key = json.loads(json.dumps(key, sort_keys=True))
    cached = None
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
        cached = stored.get("values") if stored.get("key") == key else None
    if cached is None:
        usage = codebook_usage(maskgit_run.tokenizer_dir, int(config.usage.num_images),
                               int(config.usage.batch_size))
        cc = config.compression
        cost = compression.evaluate_workdir(
            maskgit_run.transformer_dir, num_images=int(cc.num_images),
            batch_size=int(cc.batch_size), num_steps=int(cc.num_steps), order=cc.order,
            seed=int(cc.seed))
        cached = {**usage, **cost}
        with open(path + ".tmp", "w") as f:
            json.dump({"key": key, "values": cached}, f, indent=2, sort_keys=True)
        os.replace(path + ".tmp", path)
    tokenizer_eval = maskgit_run.tokenizer_results.get("eval") or {}
    return {
        "quantizer": run.quantizer,
        "log2_size": run.log2_size,
        "codebook_size": run.codebook_size,
        "levels": "x".join(map(str, run.levels)),
        "recon_fid": _evaluator(maskgit_run.tokenizer_results, "reconstruction/fid"),
        "sampling_fid": _evaluator(maskgit_run.transformer_results, "sampling/fid"),
        "usage": cached["usage"],
        "used_codes": cached["used_codes"],
        "compression_bits": cached["compression_bits"],
        "bits_per_token": cached["bits_per_token"],
        "uniform_bits": cached["uniform_bits"],
        "psnr": float(tokenizer_eval.get("eval/psnr", float("nan"))),
        "tokenizer_dir": maskgit_run.tokenizer_dir,
        "transformer_dir": maskgit_run.transformer_dir,
    }


# ---------------------------------------------------------------------------------------------
# Outputs (pure: rows in, files out).


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_csv(rows: Sequence[Mapping[str, Any]], path: str) -> None:
    """One row per (quantizer, log2 size), columns `CSV_COLUMNS` (missing values empty)."""
    for index, row in enumerate(rows):
        missing = [c for c in ("quantizer", "log2_size") if c not in row]
        if missing:
            raise ValueError(f"rows[{index}]: missing field {missing[0]!r}")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _format(row.get(c, float("nan"))) for c in CSV_COLUMNS})


def read_csv(path: str) -> list[dict[str, Any]]:
    """Rows of `write_csv` back, numbers as numbers (empty cells as NaN)."""
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {}
            for key, value in raw.items():
                if key in ("quantizer", "levels", "tokenizer_dir", "transformer_dir"):
                    row[key] = value
                elif key in ("log2_size", "codebook_size", "used_codes"):
                    row[key] = int(value) if value else None
                else:
                    row[key] = float(value) if value else float("nan")
            rows.append(row)
    return rows


def plot(rows: Sequence[Mapping[str, Any]], path: str, title: str = "") -> None:
    """The paper's Figure 3 layout: four panels against log2 codebook size, one line per
    quantizer (reconstruction FID, sampling FID, codebook usage, compression cost)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quantizers = [q for q in QUANTIZER_STYLES if any(r["quantizer"] == q for r in rows)]
    quantizers += sorted({r["quantizer"] for r in rows} - set(quantizers))
    figure, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for axis, (column, panel_title, ylabel) in zip(axes, PANELS):
        for quantizer in quantizers:
            points = sorted((r["log2_size"], r.get(column, float("nan"))) for r in rows
                            if r["quantizer"] == quantizer)
            xs = [x for x, y in points if y is not None and not math.isnan(float(y))]
            ys = [float(y) for x, y in points if y is not None and not math.isnan(float(y))]
            label, color, marker = QUANTIZER_STYLES.get(quantizer, (quantizer, None, "^"))
            axis.plot(xs, ys, marker=marker, color=color, label=label)
        axis.set_title(panel_title)
        axis.set_xlabel("log2 codebook size")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        sizes = sorted({r["log2_size"] for r in rows})
        if sizes:
            axis.set_xticks(sizes)
        if column == "usage":
            axis.set_ylim(0.0, 1.05)
    axes[0].legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ---------------------------------------------------------------------------------------------
# Driver.


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def _print(line: str) -> None:
    print(line, flush=True)


def run_sweep(config: Any, workdir: str, *, restart: bool = False,
              log: Callable[[str], None] = _print) -> list[dict[str, Any]]:
    """Trains/reuses every run of `config` under `workdir`, writes sweep.csv and sweep.png
    after each run (so partial sweeps leave a plot), returns the rows."""
    from maskgit import pipeline

    runs = plan(config)
    os.makedirs(workdir, exist_ok=True)
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    worked = 0.0  # seconds spent on runs that were not already finished
    fresh = 0
    for index, run in enumerate(runs):
        elapsed = time.monotonic() - started
        remaining = len(runs) - index
        eta = f", ETA {_duration(worked / fresh * remaining)}" if fresh else ""
        levels = f", levels {list(run.levels)}" if run.levels else ""
        log(f"[{index + 1}/{len(runs)}] {run.quantizer.upper()} 2^{run.log2_size} "
            f"({run.codebook_size} codes{levels}) - elapsed {_duration(elapsed)}{eta}")
        run_started = time.monotonic()
        tokenizer_config, transformer_config = pipeline.configs_for(
            run.quantizer, config.maskgit_size, run_overrides(config, run))
        run_dir = os.path.join(workdir, run.name)
        maskgit_run = pipeline.run_maskgit(tokenizer_config, transformer_config, run_dir,
                                           restart=restart)
        row = measure(config, run, maskgit_run)
        rows.append(row)
        took = time.monotonic() - run_started
        if took > 30:  # a reused run takes seconds; only real work predicts the rest
            worked += took
            fresh += 1
        log(f"    {run.name}: recon FID {_format(row['recon_fid']) or '-'}, sampling FID "
            f"{_format(row['sampling_fid']) or '-'}, usage {row['usage']:.1%} "
            f"({row['used_codes']}/{row['codebook_size']}), compression "
            f"{row['compression_bits']:.1f} bits/image ({_duration(took)})")
        write_outputs(rows, workdir, config.preset)
    log(f"done in {_duration(time.monotonic() - started)}: {os.path.join(workdir, 'sweep.csv')}, "
        f"{os.path.join(workdir, 'sweep.png')}")
    return rows


def write_outputs(rows: Sequence[Mapping[str, Any]], workdir: str, preset: str) -> None:
    """sweep.csv (sorted by size, then VQ before FSQ) and sweep.png of the rows so far."""
    order = {name: index for index, name in enumerate(QUANTIZER_STYLES)}
    rows = sorted(rows, key=lambda r: (r["log2_size"], order.get(r["quantizer"], len(order)),
                                       r["quantizer"]))
    write_csv(rows, os.path.join(workdir, "sweep.csv"))
    plot(rows, os.path.join(workdir, "sweep.png"),
         title=f"Codebook-size study ({preset}): VQ vs FSQ MaskGIT")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/sweeps/codebook_size.py:tiny",
                        help="sweep config file and preset, e.g. "
                             "configs/sweeps/codebook_size.py:tiny")
    parser.add_argument("--workdir", required=True, help="output directory of the sweep")
    parser.add_argument("--restart", action="store_true",
                        help="retrain every run from scratch instead of reusing finished ones")
    parser.add_argument("--compilation_cache", default=None, metavar="DIR",
                        help="persistent XLA compilation cache, so identical programs (the "
                             "Inception network of every FID evaluation) compile once "
                             "(default: WORKDIR/compilation_cache; '' disables)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="change the sweep config, e.g. log2_sizes=(4,10,16) or "
                             "tokenizer.total_steps=100 (repeatable)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
        apply_overrides(config, args.override)
        from configs.sweeps import codebook_size as sweep_configs

        sweep_configs.check_config(config)
    except ValueError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    import jax

    from fsq_jax.train import cli
    from maskgit import pipeline

    cli.quiet_library_logs()
    cache = (os.path.join(args.workdir, "compilation_cache") if args.compilation_cache is None
             else args.compilation_cache)
    if cache:
        jax.config.update("jax_compilation_cache_dir", os.path.abspath(cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    try:
        run_sweep(config, args.workdir, restart=args.restart)
    except pipeline.StagePreemptedError as stopped:
        print(f"sweep stopped: {stopped}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
