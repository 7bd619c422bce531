"""Finds evaluated runs on disk and sorts them into the rows of the paper's tables.

A run is a directory with `config.json` (written when training starts) and `results.json`
(written by training) or, for a run evaluated before it finished, `evaluation.json` (written by
`scripts/evaluate.py`). What a run is — MaskGIT stage II or UViM
stage II, which quantizer, which ablation — is read from its config, never from its path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from fsq_jax import run_dir
from fsq_jax.reporting.tables import RunResult

# The headline metric of each UViM task, as its stage-II evaluator ("uvim") names it.
UVIM_HEADLINE = {"depth": "rmse", "panoptic": "pq", "colorization": "fid"}


@dataclass(frozen=True)
class Run:
    """A run directory with its parsed config and results."""

    workdir: str
    config: Mapping[str, Any]
    results: Mapping[str, Any]

    def evaluator(self, key: str) -> float | None:
        value = self.results.get("evaluators", {}).get(key)
        return None if value is None else float(value)

    def checkpoint(self) -> str:
        step = self.results.get("step")
        return "" if step is None else os.path.join(self.workdir, "checkpoints", str(step))


def load_run(workdir: str) -> Run | None:
    """The run in `workdir`, or None when it has no readable config.json and results.json."""
    config = run_dir.read_json(os.path.join(workdir, run_dir.CONFIG_FILE))
    results = run_dir.read_json(os.path.join(workdir, run_dir.RESULTS_FILE))
    if results is None:  # evaluated with `scripts/evaluate.py --out <run>/evaluation.json`
        results = run_dir.read_json(os.path.join(workdir, run_dir.EVALUATION_FILE))
    if not isinstance(config, dict) or not isinstance(results, dict):
        return None
    return Run(workdir, config, results)


def find_runs(roots: list[str]) -> Iterator[Run]:
    """Every evaluated run under `roots` (directories searched recursively), sorted by path."""
    for root in roots:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"run directory {root!r} does not exist")
        for directory, subdirs, files in sorted(os.walk(root)):
            subdirs.sort()
            if run_dir.CONFIG_FILE in files and (run_dir.RESULTS_FILE in files
                                                 or run_dir.EVALUATION_FILE in files):
                run = load_run(directory)
                if run is not None:
                    yield run


def _quantizer(config: Mapping[str, Any]) -> tuple[str | None, Mapping[str, Any]]:
    """(name, fields) of a run's selected quantizer (`quantizer.name`, `quantizer.<name>`)."""
    section = config.get("quantizer")
    if not isinstance(section, Mapping):
        return None, {}
    name = section.get("name")
    return name, section.get(name, {}) if isinstance(name, str) else {}


def _source(run: Run) -> dict[str, str]:
    return {"config": os.path.join(run.workdir, run_dir.CONFIG_FILE),
            "checkpoint": run.checkpoint()}


def maskgit_entry(run: Run) -> tuple[str, RunResult] | None:
    """(quantizer, row) for a MaskGIT stage-II run; usage comes from its stage-I run."""
    if run.config.get("task") != "maskgit.tasks:TransformerTask":
        return None
    tokenizer_dir = str(run.config.get("tokenizer_workdir", ""))
    if not os.path.isabs(tokenizer_dir) and not os.path.isdir(tokenizer_dir):
        tokenizer_dir = os.path.join(os.path.dirname(run.workdir), os.path.basename(tokenizer_dir))
    tokenizer = load_run(tokenizer_dir)
    name = _quantizer(tokenizer.config if tokenizer else run.config)[0]
    if name is None:
        return None
    metrics = {key: run.evaluator(f"sampling/{key}") for key in ("fid", "precision", "recall")}
    metrics["usage"] = tokenizer.evaluator("codebook/usage") if tokenizer else None
    return name, RunResult(metrics, **_source(run))


def uvim_entry(run: Run) -> tuple[tuple[str, str], RunResult] | None:
    """((task, variant), row) for a UViM stage-II run, ablations folded into task/variant."""
    if run.config.get("task") != "uvim.tasks:Stage2Task":
        return None
    dense = run.config.get("output", {}).get("name")
    name, fields = _quantizer(run.config)
    if dense not in UVIM_HEADLINE or name not in ("vq", "fsq"):
        return None
    variant = name
    if name == "vq" and not fields.get("split_codes", True):
        variant = "vq_nosplit"
    task = dense
    if not run.config.get("model", {}).get("with_context", True):
        task = f"{dense}_nocontext"
    metrics = {"value": run.evaluator(f"uvim/{UVIM_HEADLINE[dense]}"),
               "usage": run.evaluator("uvim/codebook_usage")}
    return (task, variant), RunResult(metrics, **_source(run))


def collect(runs: list[Run]) -> tuple[dict[str, RunResult], dict[tuple[str, str], RunResult]]:
    """Sorts runs into the MaskGIT table and UViM Table 2; a later run of the same row wins."""
    maskgit, uvim = {}, {}
    for run in runs:
        if (entry := maskgit_entry(run)) is not None:
            maskgit[entry[0]] = entry[1]
        elif (entry := uvim_entry(run)) is not None:
            uvim[entry[0]] = entry[1]
    return maskgit, uvim
