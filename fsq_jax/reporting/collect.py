"""Finds evaluated runs on disk and sorts them into the rows of the paper's tables.

A run is a directory with `config.json` (written when training starts) and `results.json`
(written by training) or, for a run evaluated before it finished, `evaluation.json` (written by
`scripts/evaluate.py`). What a run is — MaskGIT stage II or UViM stage II, which quantizer,
which ablation, which dataset at which resolution — is read from its config, never from its path.
Every run is accounted for: a row of a table, a stage I behind such a row, or listed as in no
table.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from fsq_jax import run_dir
from fsq_jax.reporting.tables import RunResult, Setting

# The headline metric of each UViM task, as its stage-II evaluator ("uvim") names it.
UVIM_HEADLINE = {"depth": "rmse", "panoptic": "pq", "colorization": "fid"}
# Data sources with a name people know them by; others print as given.
DATASET_LABELS = {
    "scenes": "procedural scenes",
    "tfds:imagenet2012": "ImageNet",
    "tfds:nyu_depth_v2": "NYU Depth v2",
    "tfds:coco/2017_panoptic": "COCO panoptic",
}
MASKGIT_STAGE2 = "maskgit.tasks:TransformerTask"
UVIM_STAGE2 = "uvim.tasks:Stage2Task"


@dataclass(frozen=True)
class Run:
    """A run directory with its parsed config and results; `finished` is the modification time
    of its results file (the newest run of a setting wins when runs are collapsed)."""

    workdir: str
    config: Mapping[str, Any]
    results: Mapping[str, Any]
    finished: float = 0.0

    def evaluator(self, key: str) -> float | None:
        value = self.results.get("evaluators", {}).get(key)
        return None if value is None else float(value)

    def checkpoint(self) -> str:
        step = self.results.get("step")
        return "" if step is None else os.path.join(self.workdir, "checkpoints", str(step))


def load_run(workdir: str) -> Run | None:
    """The run in `workdir`, or None when it has no readable config.json and results.json."""
    config = run_dir.read_json(os.path.join(workdir, run_dir.CONFIG_FILE))
    path = os.path.join(workdir, run_dir.RESULTS_FILE)
    results = run_dir.read_json(path)
    if results is None:  # evaluated with `scripts/evaluate.py --out <run>/evaluation.json`
        path = os.path.join(workdir, run_dir.EVALUATION_FILE)
        results = run_dir.read_json(path)
    if not isinstance(config, dict) or not isinstance(results, dict):
        return None
    return Run(workdir, config, results, os.path.getmtime(path))


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


def dataset_label(source: str) -> str:
    """A data source as a table shows it: "scenes" -> "procedural scenes", "folder:/a/b" ->
    "folder b", "tfds:nyu_depth_v2" -> "NYU Depth v2"."""
    if source in DATASET_LABELS:
        return DATASET_LABELS[source]
    kind, _, argument = source.partition(":")
    if kind == "folder":
        return f"folder {os.path.basename(os.path.normpath(argument))}"
    return argument if kind == "tfds" and argument else source or "—"


def _quantizer(config: Mapping[str, Any]) -> tuple[str | None, Mapping[str, Any]]:
    """(name, fields) of a run's selected quantizer (`quantizer.name`, `quantizer.<name>`)."""
    section = config.get("quantizer")
    if not isinstance(section, Mapping):
        return None, {}
    name = section.get("name")
    return name, section.get(name, {}) if isinstance(name, str) else {}


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples a config holds (FSQ levels)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def codebook_size(config: Mapping[str, Any]) -> int | None:
    """Codebook size of a run's quantizer section (as config.json holds it), None if unknown."""
    name, fields = _quantizer(config)
    if name is None or not fields:
        return None
    from fsq_jax import quantizers

    try:  # fields a run did not record (an older version) take their defaults
        return quantizers.codebook_size(quantizers.config(name, **_tuples(dict(fields))))
    except Exception:  # a section this version cannot build (older run, unknown quantizer)
        return None


def steps_label(*runs: Run | None) -> str:
    """"1,000 + 1,200": the steps each stage trained (— where unknown)."""
    steps = [run.results.get("step") if run is not None else None for run in runs]
    return " + ".join("—" if step is None else f"{int(step):,}" for step in steps)


def setting(run: Run, stage_one: Run | None) -> Setting:
    """Dataset, resolution and steps of a stage-II run; the codebook of its stage I."""
    data = run.config.get("data", {}) if isinstance(run.config.get("data"), Mapping) else {}
    size = data.get("image_size")
    return Setting(dataset=dataset_label(str(data.get("source", ""))),
                   resolution=int(size) if size else None,
                   steps=steps_label(stage_one, run),
                   codebook_size=codebook_size(stage_one.config if stage_one else run.config))


def _stage_one(run: Run, field: str) -> Run | None:
    """The frozen stage I a stage-II run names in `field` (also found beside the run when the
    path was relative to another working directory)."""
    path = str(run.config.get(field, ""))
    if not path:
        return None
    if not os.path.isabs(path) and not os.path.isdir(path):
        path = os.path.join(os.path.dirname(run.workdir), os.path.basename(path))
    return load_run(path)


def _source(run: Run) -> dict[str, str]:
    return {"config": os.path.join(run.workdir, run_dir.CONFIG_FILE),
            "checkpoint": run.checkpoint()}


def maskgit_entry(run: Run) -> tuple[str, RunResult, Run | None] | None:
    """(quantizer, row, its stage-I run) for a MaskGIT stage-II run; usage comes from stage I."""
    if run.config.get("task") != MASKGIT_STAGE2:
        return None
    tokenizer = _stage_one(run, "tokenizer_workdir")
    name = _quantizer(tokenizer.config if tokenizer else run.config)[0]
    if name is None:
        return None
    metrics = {key: run.evaluator(f"sampling/{key}") for key in ("fid", "precision", "recall")}
    metrics["usage"] = tokenizer.evaluator("codebook/usage") if tokenizer else None
    return name, RunResult(metrics, **_source(run), setting=setting(run, tokenizer)), tokenizer


def uvim_entry(run: Run) -> tuple[tuple[str, str], RunResult, Run | None] | None:
    """((task, variant), row, its stage-I run) for a UViM stage-II run, ablations folded into
    task / variant."""
    if run.config.get("task") != UVIM_STAGE2:
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
    stage_one = _stage_one(run, "stage1_workdir")
    metrics = {"value": run.evaluator(f"uvim/{UVIM_HEADLINE[dense]}"),
               "usage": run.evaluator("uvim/codebook_usage")}
    return (task, variant), RunResult(metrics, **_source(run),
                                      setting=setting(run, stage_one)), stage_one


@dataclass(frozen=True)
class Collected:
    """The runs sorted into the tables.

    Attributes:
      maskgit: (quantizer, row) of every MaskGIT stage-II run, in the order found.
      uvim: ((task, variant), row) of every UViM stage-II run.
      stage_one: stage-I runs read through a stage II above (tokenizer usage, step counts).
      other: runs in no table (stage I without a stage II, autoencoders, unknown tasks).
      hidden: runs left out because `newest_only` kept a newer run of the same setting.
    """

    maskgit: list[tuple[str, RunResult]]
    uvim: list[tuple[tuple[str, str], RunResult]]
    stage_one: list[Run]
    other: list[Run]
    hidden: list[Run]


def _newest(entries: list[tuple[Any, RunResult, Run]]) -> tuple[list[tuple[Any, RunResult]],
                                                                list[Run]]:
    """One entry per (row key, setting): the most recently finished, counting the others."""
    groups: dict[tuple[Any, Setting], list[tuple[Any, RunResult, Run]]] = {}
    for entry in entries:
        key = (entry[0], dataclasses.replace(entry[1].setting, steps=""))
        groups.setdefault(key, []).append(entry)
    kept, hidden = [], []
    for group in groups.values():
        group.sort(key=lambda entry: (entry[2].finished, entry[2].workdir))
        key, result, _ = group[-1]
        kept.append((key, dataclasses.replace(result, others=len(group) - 1)))
        hidden += [run for _, _, run in group[:-1]]
    return kept, hidden


def collect(runs: list[Run], newest_only: bool = False) -> Collected:
    """Sorts runs into the MaskGIT table and UViM Table 2, every run a row of its own unless
    `newest_only` (then one row per quantizer / ablation / dataset / resolution / codebook
    size: the most recently finished run, with the number of others it stands for)."""
    maskgit, uvim, used = [], [], set()
    for run in runs:
        for entry_fn, rows in ((maskgit_entry, maskgit), (uvim_entry, uvim)):
            if (entry := entry_fn(run)) is not None:
                key, result, stage_one = entry
                rows.append((key, result, run))
                if stage_one is not None:
                    used.add(os.path.normpath(stage_one.workdir))
                break
    tabled = {os.path.normpath(run.workdir) for _, _, run in maskgit + uvim}
    stage_one = [r for r in runs if os.path.normpath(r.workdir) in used - tabled]
    other = [r for r in runs if os.path.normpath(r.workdir) not in used | tabled]
    hidden: list[Run] = []
    if newest_only:
        (maskgit_rows, hidden_maskgit), (uvim_rows, hidden_uvim) = _newest(maskgit), _newest(uvim)
        hidden = hidden_maskgit + hidden_uvim
    else:
        maskgit_rows = [(key, result) for key, result, _ in maskgit]
        uvim_rows = [(key, result) for key, result, _ in uvim]
    return Collected(maskgit_rows, uvim_rows, stage_one, other, hidden)
