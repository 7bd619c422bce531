"""The FSQ-vs-VQ report of `make demo`: the paper's MaskGIT table with our numbers beside it.

Reads only what the runs left on disk (results.json, images/*.png, histograms), so the report
can be rebuilt at any time without touching a model.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass

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
           curve_pictures: Mapping[str, str] | None = None) -> str:
    """The whole report as markdown; `baseline` is `real_images_baseline`'s result plus
    `num_images`; `curve_pictures` is `training_curves`' result."""
    parts = [
        "# fsq-jax demo: FSQ vs VQ in MaskGIT on the procedural scenes",
        "",
        "Same tokenizer, same transformer, same training; only the quantizer differs "
        "(FSQ levels vs a learned VQ codebook of about the same size). Paper rows are "
        "ImageNet 256x256 after 1M + 2.5M steps on TPUs; ours are the tiny CPU presets, so "
        "compare the FSQ/VQ gap and the codebook usage, not the absolute FID.",
        "",
        tables.maskgit_table(maskgit_rows(runs), title="MaskGIT (stage II) — paper layout"),
        *([baseline_sentence(baseline)] if baseline else []),
        "### Tokenizers (stage I)",
        "",
        tokenizer_table(runs, codebook_sizes),
    ]
    if timings:
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
