"""Markdown tables in the paper's layout, our numbers beside the paper's.

The inputs are plain dicts (metric name -> value) with the run they came from, so the same
rendering serves `scripts/tables.py`, the demo report and the tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fsq_jax.reporting import paper


@dataclass(frozen=True)
class RunResult:
    """One evaluated run: its metrics and where they came from."""

    metrics: Mapping[str, float]
    config: str = ""
    checkpoint: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)


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
    parts = [p for p in (result.config, result.checkpoint) if p]
    return "<br>".join(f"`{p}`" for p in parts) if parts else "—"


def maskgit_table(ours: Mapping[str, RunResult], title: str = "") -> str:
    """The paper's MaskGIT table: FID, precision, recall, usage for VQ and FSQ.

    Args:
      ours: quantizer name ("vq", "fsq") -> our evaluated transformer run. Its metrics use the
        keys `fid`, `precision`, `recall`, `usage` (a fraction); missing keys print as `—`.
      title: optional heading line.
    """
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines += [
        "| model | FID ↓ | precision ↑ | recall ↑ | codebook usage | source |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("vq", "fsq"):
        label = "VQ" if name == "vq" else "FSQ"
        if name in ours:
            m = ours[name].metrics
            lines.append(
                f"| MaskGIT {label} (ours) | {format_value(m.get('fid'), 'fid')} | "
                f"{format_value(m.get('precision'))} | {format_value(m.get('recall'))} | "
                f"{format_value(m.get('usage'), 'percent')} | {_source(ours[name])} |"
            )
        p = paper.MASKGIT[name]
        lines.append(
            f"| MaskGIT {label} (paper) | {format_value(p['fid'], 'fid')} | "
            f"{format_value(p['precision'])} | {format_value(p['recall'])} | "
            f"{format_value(p['usage'], 'percent')} | paper, ImageNet 256² |"
        )
    return "\n".join(lines) + "\n"


_UVIM_ROWS = (
    ("depth", "vq", "fsq", "NYU Depth v2 (RMSE ↓)"),
    ("depth", "vq_nosplit", None, "VQ without splitting (RMSE ↓)"),
    ("panoptic", "vq", "fsq", "COCO panoptic (PQ ↑)"),
    ("panoptic_nocontext", "vq", "fsq", "panoptic without image context (PQ ↑)"),
    ("colorization", "vq", "fsq", "colorization (FID ↓)"),
)


def _uvim_cell(result: RunResult | None, task: str) -> str:
    if result is None:
        return "—"
    value = result.metrics.get("value")
    usage = result.metrics.get("usage")
    text = format_value(value, "fid" if task == "colorization" else "float")
    if usage is not None:
        text += f" (usage {format_value(usage, 'percent')})"
    return text


def _paper_cell(task: str, variant: str | None) -> str:
    if variant is None or (task, variant) not in paper.UVIM:
        return "—"
    entry = paper.UVIM[(task, variant)]
    text = format_value(entry["value"], "fid" if task == "colorization" else "float")
    if entry["std"] is not None:
        text += f" ± {entry['std']:.3f}"
    if entry["usage"] is not None:
        text += f" (usage {format_value(entry['usage'], 'percent')})"
    return text


def uvim_table(ours: Mapping[tuple[str, str], RunResult], title: str = "") -> str:
    """The paper's Table 2: per task, VQ and FSQ, ours beside the paper's, plus ablations.

    Args:
      ours: (task, variant) -> run, with task in depth / panoptic / panoptic_nocontext /
        colorization and variant in vq / fsq / vq_nosplit; metrics `value` (the task's
        headline metric) and optionally `usage`.
    """
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines += [
        "| task (metric) | VQ (ours) | FSQ (ours) | VQ (paper) | FSQ (paper) | sources |",
        "|---|---|---|---|---|---|",
    ]
    for task, vq_variant, fsq_variant, label in _UVIM_ROWS:
        vq_run = ours.get((task, vq_variant))
        fsq_run = ours.get((task, fsq_variant)) if fsq_variant else None
        if vq_run is None and fsq_run is None and (task, vq_variant) not in paper.UVIM:
            continue
        sources = " ".join(_source(r) for r in (vq_run, fsq_run) if r is not None) or "—"
        lines.append(
            f"| {label} | {_uvim_cell(vq_run, task)} | {_uvim_cell(fsq_run, task)} | "
            f"{_paper_cell(task, vq_variant)} | {_paper_cell(task, fsq_variant)} | {sources} |"
        )
    return "\n".join(lines) + "\n"
