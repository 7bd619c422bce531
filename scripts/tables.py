"""Collects results.json files into markdown tables laid out like the paper's.

Prints (and with --out writes) the MaskGIT table and UViM Table 2: the paper's rows, and every
evaluated run of ours beside them with its dataset, resolution, training steps, codebook size,
config and checkpoint. `--newest` keeps one row per setting (the most recently finished run,
saying how many others it stands for). Runs in no table are listed at the end.

    python scripts/tables.py --runs runs/ [--out runs/tables.md] [--newest]
"""

from __future__ import annotations

import sys

from absl import flags

from fsq_jax.train import cli

_RUNS = flags.DEFINE_list("runs", ["runs"], "Directories searched (recursively) for runs.")
_OUT = flags.DEFINE_string("out", "", "Also write the markdown to this file.")
_NEWEST = flags.DEFINE_bool("newest", False, "One row per quantizer, ablation, dataset, "
                            "resolution and codebook size: the most recently finished run.")
_LISTED = 20  # runs in no table: at most this many listed by path


def main(argv: list[str]) -> None:
    cli.start(argv)
    from fsq_jax.reporting import collect, tables

    try:
        runs = list(collect.find_runs(_RUNS.value))
    except FileNotFoundError as error:
        sys.exit(f"error: {error}")
    found = collect.collect(runs, newest_only=_NEWEST.value)
    summary = (f"Runs found: {len(runs)} under {', '.join(_RUNS.value)}: "
               f"{len(found.maskgit)} MaskGIT and {len(found.uvim)} UViM rows below, "
               f"{len(found.stage_one)} stage-I runs behind them, {len(found.other)} in no table")
    if found.hidden:
        summary += f", {len(found.hidden)} older runs of a shown setting (without --newest: all)"
    lines = [summary + ".", "",
             tables.maskgit_table(found.maskgit, title="MaskGIT (FID, precision, recall, usage)"),
             tables.uvim_table(found.uvim, title="UViM (Table 2)")]
    if found.other:
        lines += ["### Runs in no table", ""]
        lines += [f"- `{run.workdir}` ({run.config.get('task', 'no task')})"
                  for run in found.other[:_LISTED]]
        if len(found.other) > _LISTED:
            lines.append(f"- and {len(found.other) - _LISTED} more")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            f.write(text)


if __name__ == "__main__":
    cli.run(main)
