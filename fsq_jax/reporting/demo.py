"""The FSQ-vs-VQ report of `make demo`: the paper's MaskGIT table with our numbers beside it.

Reads only what the runs left on disk (results.json, images/*.png, histograms), so the report
can be rebuilt at any time without touching a model.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fsq_jax.reporting import collect, curves, tables

QUANTIZER_LABELS = {"fsq": "FSQ", "vq": "VQ"}


@dataclass(frozen=True)
class StageRun(collect.Run):
    """A finished run whose `config` is the config spec the report shows (`file.py:args`)."""

    config: str


@dataclass(frozen=True)
class QuantizerRuns:
    """Stage I (tokenizer) and stage II (transformer) trained with one quantizer."""

    tokenizer: StageRun
    transformer: StageRun


def latest_image(workdir: str, name: str) -> str | None:
    """Newest `workdir/images/<name>*.png` by the step number in its file name."""
    candidates = glob.glob(os.path.join(workdir, "images", f"{name}*.png"))

    def step_of(path: str) -> int:
        numbers = re.findall(r"\d+", os.path.basename(path))
        return int(numbers[-1]) if numbers else -1

    return max(candidates, key=step_of) if candidates else None


def _setting(run: QuantizerRuns) -> tables.Setting:
    """Dataset, resolution, steps and codebook size, from the runs' config.json files."""
    transformer = collect.load_run(run.transformer.workdir)
    tokenizer = collect.load_run(run.tokenizer.workdir)
    if transformer is None:
        return tables.Setting(steps=collect.steps_label(run.tokenizer, run.transformer))
    return collect.setting(transformer, tokenizer)


def maskgit_rows(runs: Mapping[str, QuantizerRuns]) -> dict[str, tables.RunResult]:
    """Our MaskGIT-table rows: sampling FID/precision/recall of stage II, usage of stage I."""
    rows = {}
    for name, run in runs.items():
        rows[name] = tables.RunResult(
            metrics={
                "fid": run.transformer.evaluator("sampling/fid"),
                "precision": run.transformer.evaluator("sampling/precision"),
                "recall": run.transformer.evaluator("sampling/recall"),
                "usage": run.tokenizer.evaluator("codebook/usage"),
            },
            config=run.transformer.config,
            checkpoint=run.transformer.checkpoint(),
            setting=_setting(run),
        )
    return rows


def tokenizer_table(runs: Mapping[str, QuantizerRuns],
                    codebook_sizes: Mapping[str, int] | None = None) -> str:
    """Stage-I numbers the paper discusses: reconstruction FID, usage, perplexity, code entropy."""
    codebook_sizes = codebook_sizes or {}
    lines = [
        "| tokenizer | codebook size | reconstruction FID ↓ | usage | perplexity | "
        "code entropy (bits) | eval PSNR (dB) | source |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        stage = run.tokenizer
        size = codebook_sizes.get(name, "—")
        psnr = stage.results.get("eval", {}).get("eval/psnr")
        lines.append(
            f"| {QUANTIZER_LABELS.get(name, name)} | {size} | "
            f"{tables.format_value(stage.evaluator('reconstruction/fid'), 'fid')} | "
            f"{tables.format_value(stage.evaluator('codebook/usage'), 'percent')} | "
            f"{tables.format_value(stage.evaluator('codebook/perplexity'), 'fid')} | "
            f"{tables.format_value(stage.evaluator('codebook/entropy_bits'), 'fid')} | "
            f"{tables.format_value(psnr, 'fid')} | `{stage.config}` |"
        )
    return "\n".join(lines) + "\n"


def collect_pictures(runs: Mapping[str, QuantizerRuns], out_dir: str) -> dict[str, str]:
    """Copies each run's newest reconstructions, samples and histogram into `out_dir`.

    Returns picture title -> file name relative to `out_dir`.
    """
    pictures = {}
    for name, run in runs.items():
        label = QUANTIZER_LABELS.get(name, name)
        sources = {
            f"{label} reconstructions (top: input, bottom: reconstruction)":
                latest_image(run.tokenizer.workdir, "reconstructions"),
            f"{label} class-conditional samples (one row per class)":
                latest_image(run.transformer.workdir, "samples"),
            f"{label} code-usage histogram":
                _first_existing(glob.glob(os.path.join(run.tokenizer.workdir, "**",
                                                       "*histogram.png"), recursive=True)),
        }
        for title, source in sources.items():
            if source is None:
                continue
            kind = os.path.basename(source).split("_")[0].split(".")[0]
            target = f"{name}_{kind}.png"
            shutil.copyfile(source, os.path.join(out_dir, target))
            pictures[title] = target
    return pictures


def training_curves(runs: Mapping[str, QuantizerRuns], out_dir: str) -> dict[str, str]:
    """Training curves of each stage, the quantizers' runs on the same axes, as PNGs in
    `out_dir` (`<stage>_curves_train.png`, `..._evaluators.png`).

    Returns picture title -> file name relative to `out_dir`.
    """
    pictures = {}
    for stage in ("tokenizer", "transformer"):
        metrics = {QUANTIZER_LABELS.get(name, name): os.path.join(getattr(run, stage).workdir,
                                                                  "metrics.csv")
                   for name, run in runs.items()}
        metrics = {label: path for label, path in metrics.items() if os.path.isfile(path)}
        if not metrics:
            continue
        written = curves.plot_metrics(metrics, out_dir, prefix=f"{stage}_curves_",
                                      groups=("train", "evaluators"))
        for group, path in written.items():
            what = "training metrics" if group == "train" else "evaluations over training"
            pictures[f"{stage}: {what} ({', '.join(metrics)})"] = path.name
    return pictures


def _first_existing(paths: list[str]) -> str | None:
    return sorted(paths)[0] if paths else None


def baseline_sentence(baseline: Mapping[str, float]) -> str:
    """Calibration line: real validation images scored exactly as the samples are."""
    return (f"Real validation images scored exactly like the samples ({baseline['num_images']:.0f} "
            f"images against the same training reference) get FID "
            f"{tables.format_value(baseline.get('fid'), 'fid')}, precision "
            f"{tables.format_value(baseline.get('precision'))} and recall "
            f"{tables.format_value(baseline.get('recall'))}: the best any model can score here, "
            "so read our rows against this floor.\n")


def render(runs: Mapping[str, QuantizerRuns], pictures: Mapping[str, str],
           timings: Mapping[str, float] | None = None,
           codebook_sizes: Mapping[str, int] | None = None,
           baseline: Mapping[str, float] | None = None,
           curve_pictures: Mapping[str, str] | None = None,
           headline: Mapping[str, Any] | None = None) -> str:
    """The whole report as markdown; `baseline` is `real_images_baseline`'s result plus
    `num_images`; `curve_pictures` is `training_curves`' result; `headline` is `summary`'s
    (report.json, with the demo's `wall_seconds` and `parallel_runs` when known), whose per-stage
    times replace `timings` but for its extra rows."""
    parts = [
        "# fsq-jax demo: FSQ vs VQ in MaskGIT on the procedural scenes",
        "",
        "Same tokenizer, same transformer, same training; only the quantizer differs "
        "(FSQ levels vs a learned VQ codebook of about the same size). Paper rows are "
        "ImageNet 256x256 after 1M + 2.5M steps on TPUs; ours are the tiny CPU presets, so "
        "compare the FSQ/VQ gap and the codebook usage, not the absolute FID.",
        "",
        *(["### Headline", "", headline_table(headline)] if headline else []),
        tables.maskgit_table(maskgit_rows(runs), title="MaskGIT (stage II) — paper layout"),
        *([baseline_sentence(baseline)] if baseline else []),
        "### Tokenizers (stage I)",
        "",
        tokenizer_table(runs, codebook_sizes),
    ]
    if headline:
        parts += ["### Time", "", times_table(headline, timings)]
    elif timings:
        parts += ["### Time", "", "| stage | seconds |", "|---|---|"]
        parts += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
        parts.append("")
    if pictures:
        parts += ["### Pictures", ""]
        parts += [f"**{title}**\n\n![{title}]({path})\n" for title, path in pictures.items()]
    if curve_pictures:
        parts += ["### Training curves", "",
                  "From each run's metrics.csv (`scripts/plot_metrics.py --runs RUN` draws every "
                  "group of one run).", ""]
        parts += [f"**{title}**\n\n![{title}]({path})\n"
                  for title, path in curve_pictures.items()]
    return "\n".join(parts)


# The headline numbers of each quantizer (report.json keys -> where each run stored them).
HEADLINE_METRICS = {
    "psnr": ("tokenizer", "eval", "eval/psnr"),
    "reconstruction_fid": ("tokenizer", "evaluators", "reconstruction/fid"),
    "usage": ("tokenizer", "evaluators", "codebook/usage"),
    "sampling_fid": ("transformer", "evaluators", "sampling/fid"),
    "precision": ("transformer", "evaluators", "sampling/precision"),
    "recall": ("transformer", "evaluators", "sampling/recall"),
}
# What the demo aims for (README): PSNR in dB, FIDs as multiples of the real-images floor.
TARGETS = {"psnr": 28.0, "reconstruction_fid": 2.0, "sampling_fid": 3.0, "precision": 0.3,
           "recall": 0.2}


def headline_value(run: QuantizerRuns, metric: str) -> float | None:
    """One `HEADLINE_METRICS` value of one run (None when the run did not measure it)."""
    stage, section, key = HEADLINE_METRICS[metric]
    value = getattr(run, stage).results.get(section, {}).get(key)
    return None if value is None else float(value)


def stage_seconds(run: QuantizerRuns) -> dict[str, float]:
    """Wall seconds per stage and part (`tokenizer training`, `tokenizer evaluation`, ...) from
    the `seconds` record of each stage's results.json (absent from older runs)."""
    out = {}
    for stage in ("tokenizer", "transformer"):
        seconds = getattr(run, stage).results.get("seconds", {})
        if not seconds:
            continue
        out[f"{stage} training"] = seconds.get("training", 0.0) + seconds.get("compilation", 0.0)
        out[f"{stage} evaluation"] = seconds.get("eval", 0.0)
        out[f"{stage} pictures and checkpoints"] = (seconds.get("images", 0.0)
                                                    + seconds.get("checkpoint", 0.0))
    return out


def summary(runs_by_seed: Mapping[str, Sequence[QuantizerRuns]],
            baseline: Mapping[str, float] | None = None) -> dict[str, Any]:
    """`report.json`: `{"floor_fid", "floor": {...}, "<quantizer>": {metric: mean over seeds,
    "std": {metric: spread}, "seeds": n, "per_seed": [{metric: value}], "seconds": {...}}}`.

    Fractions (usage, precision, recall) are 0..1; the spread is the sample standard deviation
    (ddof 1; 0 with one seed)."""
    out: dict[str, Any] = {}
    if baseline:
        out["floor_fid"] = baseline.get("fid")
        out["floor"] = dict(baseline)
    for name, runs in runs_by_seed.items():
        per_seed = [{metric: headline_value(run, metric) for metric in HEADLINE_METRICS}
                    for run in runs]
        entry: dict[str, Any] = {"seeds": len(runs), "std": {}, "per_seed": per_seed}
        for metric in HEADLINE_METRICS:
            values = [row[metric] for row in per_seed if row[metric] is not None]
            entry[metric] = float(np.mean(values)) if values else None
            entry["std"][metric] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        seconds = [stage_seconds(run) for run in runs]
        parts = dict.fromkeys(part for times in seconds for part in times)
        entry["seconds"] = {part: float(np.mean([times[part] for times in seconds
                                                 if part in times])) for part in parts}
        out[name] = entry
    return out


def _with_spread(entry: Mapping[str, Any], metric: str, kind: str) -> str:
    value = entry.get(metric)
    if value is None:
        return "—"
    scale = 100.0 if kind == "percent" else 1.0
    digits = {"fid": 1, "psnr": 2, "fraction": 3, "percent": 1}[kind]
    text = f"{value * scale:.{digits}f}" + ("%" if kind == "percent" else "")
    if entry.get("seeds", 1) > 1:
        text += f" ± {entry['std'][metric] * scale:.{digits}f}"
    return text


def headline_table(report: Mapping[str, Any]) -> str:
    """The demo's headline rows (mean ± spread over seeds) with each target beside them."""
    floor = report.get("floor_fid")
    seeds = max((entry.get("seeds", 1) for entry in report.values()
                 if isinstance(entry, Mapping) and "seeds" in entry), default=1)
    lines = [
        "| quantizer | PSNR (dB) | reconstruction FID | sampling FID | precision | recall | "
        "usage |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in report.items():
        if not isinstance(entry, Mapping) or "seeds" not in entry:
            continue
        lines.append(
            f"| {QUANTIZER_LABELS.get(name, name)} | {_with_spread(entry, 'psnr', 'psnr')} | "
            f"{_with_spread(entry, 'reconstruction_fid', 'fid')} | "
            f"{_with_spread(entry, 'sampling_fid', 'fid')} | "
            f"{_with_spread(entry, 'precision', 'fraction')} | "
            f"{_with_spread(entry, 'recall', 'fraction')} | "
            f"{_with_spread(entry, 'usage', 'percent')} |")
    if floor is not None:
        lines.append(
            f"| target | ≥ {TARGETS['psnr']:.0f} | ≤ {TARGETS['reconstruction_fid'] * floor:.1f} "
            f"(2x floor) | ≤ {TARGETS['sampling_fid'] * floor:.1f} (3x floor) | "
            f"≥ {TARGETS['precision']} | ≥ {TARGETS['recall']} | — |")
    spread = (f"mean ± standard deviation over {seeds} training seeds" if seeds > 1
              else "one training seed (`--seeds 3` adds the spread)")
    floor_text = "" if floor is None else f"; real-images floor FID {floor:.1f}"
    return "\n".join(lines) + f"\n\n*{spread}{floor_text}.*\n"


def times_table(report: Mapping[str, Any], extra: Mapping[str, float] | None = None) -> str:
    """Wall seconds of every stage (mean over seeds) and of the rest of the demo."""
    lines = ["| stage | seconds |", "|---|---|"]
    for name, entry in report.items():
        if not isinstance(entry, Mapping) or "seconds" not in entry:
            continue
        label = QUANTIZER_LABELS.get(name, name)
        lines += [f"| {label} {part} | {seconds:.0f} |"
                  for part, seconds in entry["seconds"].items()]
    lines += [f"| {part} | {seconds:.0f} |" for part, seconds in (extra or {}).items()]
    text = "\n".join(lines) + "\n"
    wall, parallel = report.get("wall_seconds"), int(report.get("parallel_runs", 1))
    if wall is not None:
        how = (f"{parallel} runs at a time, each in its own process, so the stage times above "
               "overlap" if parallel > 1 else "one stage after the other")
        runs, trained = report.get("runs"), report.get("runs_trained")
        what = ""
        if runs is not None and trained is not None:
            what = f" for {runs} runs ({trained} trained by it, {runs - trained} reused)"
        minutes, seconds = divmod(round(float(wall)), 60)
        text += (f"\nThe whole demo: {minutes} min {seconds} s wall{what}, installation "
                 f"excluded; {how}.\n")
    return text
