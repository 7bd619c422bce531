"""Markdown tables in the paper's layout: the paper's rows, and ours beside them for what they are.

Every row says the setting it was measured in (dataset, resolution, training steps, codebook size),
so a tiny CPU run on procedural scenes never reads as an ImageNet or NYU Depth v2 number. Every
run gets its own row unless the caller collapsed runs of one setting (then the row says how many
others it stands for). The inputs are plain dicts with the run they came from, so the same
rendering serves `scripts/tables.py`, the demo report and the tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from fsq_jax.reporting import paper


@dataclass(frozen=True)
class Setting:
    """What a number was measured on: dataset, resolution (pixels per side), how long the
    stages trained (e.g. "1,000 + 1,200"), codebook size; None / "—" where unknown."""

    dataset: str = "—"
    resolution: int | None = None
    steps: str = "—"
    codebook_size: int | None = None


@dataclass(frozen=True)
class RunResult:
    """One evaluated run: its metrics, where they came from and the setting they belong to.

    `others`: runs of the same setting this row stands for besides itself (0 = just this run).
    """

    metrics: Mapping[str, float | None]
    config: str = ""
    checkpoint: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)
    setting: Setting = field(default_factory=Setting)
    others: int = 0


def format_value(value: float | None, kind: str = "float") -> str:
    """Formats a metric for a table cell; `—` where there is no number."""
    if value is None:
        return "—"
    if kind == "percent":
        return f"{100.0 * value:.1f}%"
    if kind == "fid":
        return f"{value:.2f}"
    return f"{value:.3f}"


def _source(result: RunResult) -> str:
    parts = [f"`{p}`" for p in (result.config, result.checkpoint) if p]
    if result.others:
        parts.append(f"newest of {result.others + 1} runs of this setting")
    return "<br>".join(parts) if parts else "—"


def _setting_cells(setting: Setting) -> str:
    resolution = f"{setting.resolution}²" if setting.resolution else "—"
    size = str(setting.codebook_size) if setting.codebook_size else "—"
    return f"{setting.dataset} | {resolution} | {setting.steps} | {size}"


def _as_rows(ours: Mapping[str, RunResult] | Iterable[tuple[str, RunResult]]
             ) -> list[tuple[str, RunResult]]:
    return list(ours.items()) if isinstance(ours, Mapping) else list(ours)


def maskgit_table(ours: Mapping[str, RunResult] | Sequence[tuple[str, RunResult]],
                  title: str = "") -> str:
    """The paper's MaskGIT table: FID, precision, recall and usage of VQ and FSQ; per
    quantizer the paper's row, then each of ours.

    Args:
      ours: (quantizer name, evaluated transformer run) pairs, or a dict of them; names other
        than "vq" and "fsq" get rows of their own after those. Metrics use the keys `fid`,
        `precision`, `recall`, `usage` (a fraction); missing keys print as `—`.
      title: optional heading line.
    """
    rows = _as_rows(ours)
    lines = [f"### {title}", ""] if title else []
    lines += [
        "| model | dataset | resolution | steps (I + II) | codebook size | FID ↓ | precision ↑ "
        "| recall ↑ | codebook usage | source |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def metric_cells(m: Mapping[str, float | None]) -> str:
        return (f"{format_value(m.get('fid'), 'fid')} | {format_value(m.get('precision'))} | "
                f"{format_value(m.get('recall'))} | {format_value(m.get('usage'), 'percent')}")

    names = ["vq", "fsq", *sorted({name for name, _ in rows} - {"vq", "fsq"})]
    for name in names:
        label = name.upper() if name in ("vq", "fsq") else name
        if name in paper.MASKGIT:
            setting = Setting(paper.MASKGIT_SETTING["dataset"],
                              paper.MASKGIT_SETTING["resolution"],
                              paper.MASKGIT_SETTING["steps"],
                              paper.MASKGIT_SETTING["codebook_size"][name])
            lines.append(f"| MaskGIT {label} (paper) | {_setting_cells(setting)} | "
                         f"{metric_cells(paper.MASKGIT[name])} | the paper |")
        for _, result in (row for row in rows if row[0] == name):
            lines.append(f"| MaskGIT {label} (ours) | {_setting_cells(result.setting)} | "
                         f"{metric_cells(result.metrics)} | {_source(result)} |")
    return "\n".join(lines) + "\n"


# Rows of Table 2: (task, quantizer variants, the row's label).
_UVIM_ROWS = (
    ("depth", ("vq", "fsq"), "depth (RMSE ↓)"),
    ("depth", ("vq_nosplit",), "depth, VQ without splitting (RMSE ↓)"),
    ("panoptic", ("vq", "fsq"), "panoptic (PQ ↑)"),
    ("panoptic_nocontext", ("vq", "fsq"), "panoptic without image context (PQ ↑)"),
    ("colorization", ("vq", "fsq"), "colorization (FID ↓)"),
)
_VARIANT_LABELS = {"vq": "VQ", "fsq": "FSQ", "vq_nosplit": "VQ, no splitting"}


def _uvim_value(task: str, value: float | None, std: float | None = None) -> str:
    text = format_value(value, "fid" if task == "colorization" else "float")
    return text + (f" ± {std:.3f}" if std is not None else "")


def uvim_table(ours: Mapping[tuple[str, str], RunResult]
               | Sequence[tuple[tuple[str, str], RunResult]], title: str = "") -> str:
    """The paper's Table 2, one row per result: per task the paper's VQ and FSQ rows, then
    each of ours, every row with its dataset, resolution, steps and codebook size.

    Args:
      ours: ((task, variant), run) pairs, or a dict of them, with task in depth / panoptic /
        panoptic_nocontext / colorization and variant in vq / fsq / vq_nosplit; metrics `value`
        (the task's headline metric) and optionally `usage`.
    """
    rows = _as_rows(ours)
    lines = [f"### {title}", ""] if title else []
    lines += [
        "| task (metric) | quantizer | dataset | resolution | steps (I + II) | codebook size | "
        "value | codebook usage | source |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, variants, label in _UVIM_ROWS:
        for variant in variants:
            name = "vq" if variant.startswith("vq") else variant
            if (task, variant) in paper.UVIM:
                entry, base = paper.UVIM[(task, variant)], paper.UVIM_SETTINGS[task]
                setting = Setting(base["dataset"], base["resolution"], base["steps"],
                                  base["codebook_size"][name])
                lines.append(
                    f"| {label} | {_VARIANT_LABELS[variant]} (paper) | {_setting_cells(setting)}"
                    f" | {_uvim_value(task, entry['value'], entry['std'])} | "
                    f"{format_value(entry['usage'], 'percent')} | the paper |")
            for _, result in (row for row in rows if row[0] == (task, variant)):
                lines.append(
                    f"| {label} | {_VARIANT_LABELS[variant]} (ours) | "
                    f"{_setting_cells(result.setting)} | "
                    f"{_uvim_value(task, result.metrics.get('value'))} | "
                    f"{format_value(result.metrics.get('usage'), 'percent')} | "
                    f"{_source(result)} |")
    return "\n".join(lines) + "\n"
