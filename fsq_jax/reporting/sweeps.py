"""Outputs of a codebook-size study (FSQ paper, Figure 3): one CSV row per (quantizer, size) and
the four-panel plot (reconstruction FID, sampling FID, codebook usage, compression cost), on the
paper's axes: usage as the number of used codes (log scale, against the codebook size) and the
compression cost in bits per token (against log2 of the codebook size, the cost of coding
without a model).

Pure functions of the rows, so a sweep cut short, or rows read back from `sweep.csv`, plot the
same way; `maskgit.sweep` produces the rows.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

CSV_COLUMNS = (
    "quantizer", "log2_size", "codebook_size", "levels", "recon_fid", "sampling_fid", "usage",
    "used_codes", "compression_bits", "bits_per_token", "uniform_bits", "psnr",
    "tokenizer_dir", "transformer_dir",
)
# (CSV column, panel title, y label) of the four panels, in the paper's order.
PANELS = (
    ("recon_fid", "Reconstruction FID", "FID (lower is better)"),
    ("sampling_fid", "Sampling FID", "FID (lower is better)"),
    ("used_codes", "Codebook usage", "used codes"),
    ("bits_per_token", "Compression cost", "bits / token"),
)
# The reference line of a panel (dashed, per quantizer): all codes used; uniform coding.
REFERENCE_LINES = {
    "used_codes": ("all codes", lambda row: float(row["codebook_size"])),
    "bits_per_token": ("uniform (log2 codes)", lambda row: math.log2(row["codebook_size"])),
}
QUANTIZER_STYLES = {"vq": ("VQ", "tab:blue", "o"), "fsq": ("FSQ", "tab:orange", "s")}


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


def format_value(value: Any) -> str:
    """A CSV / log cell: floats to 6 significant digits, NaN as empty."""
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
            writer.writerow({c: format_value(row.get(c, float("nan"))) for c in CSV_COLUMNS})


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
    quantizer (reconstruction FID, sampling FID, used codes, bits per token), the usage and
    cost panels with their reference lines (all codes used; log2 codebook size)."""
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
            if column in REFERENCE_LINES:
                name, value = REFERENCE_LINES[column]
                line = sorted((r["log2_size"], value(r)) for r in rows
                              if r["quantizer"] == quantizer and r.get("codebook_size"))
                axis.plot([x for x, _ in line], [y for _, y in line], linestyle="--",
                          linewidth=1, color=color, alpha=0.6, label=f"{label}: {name}")
        axis.set_title(panel_title)
        axis.set_xlabel("log2 codebook size")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        sizes = sorted({r["log2_size"] for r in rows})
        if sizes:
            axis.set_xticks(sizes)
        if column == "used_codes":
            axis.set_yscale("log", base=2)
        if column in REFERENCE_LINES:
            axis.legend(fontsize="small")
    axes[0].legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_outputs(rows: Sequence[Mapping[str, Any]], workdir: str, preset: str) -> None:
    """sweep.csv (sorted by size, then VQ before FSQ) and sweep.png of the rows so far."""
    order = {name: index for index, name in enumerate(QUANTIZER_STYLES)}
    rows = sorted(rows, key=lambda r: (r["log2_size"], order.get(r["quantizer"], len(order)),
                                       r["quantizer"]))
    write_csv(rows, os.path.join(workdir, "sweep.csv"))
    plot(rows, os.path.join(workdir, "sweep.png"),
         title=f"Codebook-size study ({preset}): VQ vs FSQ MaskGIT")


def _series(rows: Sequence[Mapping[str, Any]], quantizer: str, column: str
            ) -> list[tuple[int, float]]:
    """(log2 size, value) of one quantizer's rows, by size, NaNs left out."""
    points = sorted((int(r["log2_size"]), float(r[column])) for r in rows
                    if r["quantizer"] == quantizer and r.get(column) is not None)
    return [(x, y) for x, y in points if not math.isnan(y)]


def trends(rows: Sequence[Mapping[str, Any]], large: int = 10) -> list[tuple[str, bool, str]]:
    """Figure 3's qualitative findings, each checked on the rows: (finding, holds, evidence).

    1. VQ's usage collapses above 2^`large` (under half its codes used at every size above), and
       FSQ's stays near 100% there (at least 90%).
    2. FSQ's reconstruction FID improves monotonically with the codebook size.
    3. VQ's reconstruction FID flattens or worsens at the large sizes: from 2^`large` to the
       largest size it improves by less than FSQ's does (or gets worse).
    """
    out = []
    vq_usage, fsq_usage = (dict(_series(rows, q, "usage")) for q in ("vq", "fsq"))
    for name, usage, holds_at, rule in (
            ("VQ", vq_usage, lambda u: u < 0.5, "collapses (under 50% of its codes used)"),
            ("FSQ", fsq_usage, lambda u: u >= 0.9, "stays near 100% (at least 90% used)")):
        above = sorted(x for x in usage if x > large)
        if above:
            out.append((f"{name}'s codebook usage {rule} at every size above 2^{large}",
                        all(holds_at(usage[x]) for x in above),
                        ", ".join(f"2^{x}: {usage[x]:.1%}" for x in above)))
    fsq_fid = _series(rows, "fsq", "recon_fid")
    if len(fsq_fid) > 1:
        holds = all(b < a for (_, a), (_, b) in itertools.pairwise(fsq_fid))
        evidence = " -> ".join(f"{y:.1f} (2^{x})" for x, y in fsq_fid)
        out.append(("FSQ's reconstruction FID improves monotonically with the codebook size",
                    holds, evidence))
    vq_fid, fsq_fid_by_size = dict(_series(rows, "vq", "recon_fid")), dict(fsq_fid)
    common = sorted(set(vq_fid) & set(fsq_fid_by_size))
    if large in common and common[-1] > large:
        top = common[-1]
        vq_gain = vq_fid[large] - vq_fid[top]
        fsq_gain = fsq_fid_by_size[large] - fsq_fid_by_size[top]
        holds = vq_gain < fsq_gain
        evidence = (f"from 2^{large} to 2^{top} VQ's FID {vq_fid[large]:.1f} -> "
                    f"{vq_fid[top]:.1f} ({-vq_gain:+.1f}), FSQ's {fsq_fid_by_size[large]:.1f} -> "
                    f"{fsq_fid_by_size[top]:.1f} ({-fsq_gain:+.1f})")
        out.append((f"VQ's reconstruction FID flattens or worsens above 2^{large} (gains less "
                    "than FSQ's)", holds, evidence))
    return out


def _cell(row: Mapping[str, Any] | None, column: str) -> str:
    if row is None:
        return "—"
    value = row.get(column)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if column == "usage":
        return f"{value:.1%} ({row['used_codes']}/{row['codebook_size']})"
    if column == "bits_per_token":
        return f"{value:.2f}"
    return f"{value:.1f}"


# Stage-I training curves drawn for the largest sizes: do they still move when training ends?
CURVE_METRICS = ("train/quantizer/perplexity", "train/quantizer/codebook_usage_batch",
                 "train/reconstruction_loss")
CURVES_FILE = "largest_sizes_curves.png"


def plot_largest_sizes(rows: Sequence[Mapping[str, Any]], workdir: str, count: int = 2
                       ) -> str | None:
    """`<workdir>/largest_sizes_curves.png`: the tokenizer's batch perplexity, batch usage and
    reconstruction loss against steps for every run at the `count` largest sizes (None when
    none of them has a metrics.csv): whether a finding missing at the end of training is
    still on its way."""
    from fsq_jax.reporting import curves

    sizes = sorted({int(r["log2_size"]) for r in rows})[-count:]
    runs = {}
    for row in sorted(rows, key=lambda r: (int(r["log2_size"]), r["quantizer"])):
        path = os.path.join(str(row.get("tokenizer_dir", "")), "metrics.csv")
        if int(row["log2_size"]) in sizes and os.path.isfile(path):
            metrics = curves.read_metrics(path)
            name = QUANTIZER_STYLES.get(row["quantizer"], (row["quantizer"],))[0]
            label = f"{name} 2^{row['log2_size']}"
            runs[label] = {k: v for k, v in metrics.items() if k in CURVE_METRICS}
    runs = {label: metrics for label, metrics in runs.items() if metrics}
    if not runs:
        return None
    curves.plot_group(runs, os.path.join(workdir, CURVES_FILE),
                      title="Stage I over training, largest codebooks")
    return CURVES_FILE


def report(rows: Sequence[Mapping[str, Any]], preset: str, command: str,
           wall_seconds: float, parallel: int, picture: str = "sweep.png",
           curves_picture: str | None = None) -> str:
    """The study as markdown: the four panels, one table row per size, Figure 3's findings
    checked on these numbers (`trends`), the largest sizes' training curves and the time it
    took."""
    by_key = {(r["quantizer"], int(r["log2_size"])): r for r in rows}
    sizes = sorted({int(r["log2_size"]) for r in rows})
    columns = (("usage", "usage"), ("recon_fid", "recon FID"), ("sampling_fid", "sampling FID"),
               ("bits_per_token", "bits/token"), ("psnr", "PSNR"))
    header = " | ".join(f"{q} {name}" for _, name in columns for q in ("VQ", "FSQ"))
    lines = [f"# Codebook-size study ({preset}): VQ vs FSQ in MaskGIT", "",
             f"`{command}`", "", f"![codebook-size study]({picture})", "",
             f"| log2 size | {header} |", "|---" * (1 + 2 * len(columns)) + "|"]
    for size in sizes:
        cells = [_cell(by_key.get((q, size)), column) for column, _ in columns
                 for q in ("vq", "fsq")]
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    lines += ["", "FID on the same number of images for every run (comparable between the "
              "runs of this study, not with other studies); usage from tokens over the usage "
              "images; bits/token: the M2T compression cost (uniform coding costs log2 of the "
              "codebook size).", "", "### Figure 3's findings at this scale", ""]
    for finding, holds, evidence in trends(rows):
        lines.append(f"* **{'shows' if holds else 'does not show'}**: {finding} — {evidence}")
    if curves_picture:
        lines += ["", "Stage I of the largest codebooks over training (batch perplexity and "
                  "usage over 1,024 tokens, reconstruction loss): still rising or falling at "
                  "the last step means the finding is not settled at this budget.", "",
                  f"![largest codebooks over training]({curves_picture})"]
    minutes, seconds = divmod(round(wall_seconds), 60)
    lines += ["", f"{len(rows)} runs in {minutes} min {seconds} s wall, {parallel} at a time "
              "(exact figures vary between machines).", ""]
    return "\n".join(lines)
