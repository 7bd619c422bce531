"""Collects results.json files into markdown tables laid out like the paper's.

Prints (and with --out writes) the MaskGIT table and UViM Table 2, our numbers beside the
paper's, each with the config and checkpoint it came from.

    python scripts/tables.py --runs runs/ [--out runs/tables.md]
"""

from __future__ import annotations

import sys

from absl import flags

from fsq_jax.train import cli

_RUNS = flags.DEFINE_list("runs", ["runs"], "Directories searched (recursively) for runs.")
_OUT = flags.DEFINE_string("out", "", "Also write the markdown to this file.")


def main(argv: list[str]) -> None:
    cli.start(argv)
    from fsq_jax.reporting import collect, tables

    try:
        runs = list(collect.find_runs(_RUNS.value))
    except FileNotFoundError as error:
        sys.exit(f"error: {error}")
    maskgit, uvim = collect.collect(runs)
    text = "\n".join([
        f"Runs found: {len(runs)} under {', '.join(_RUNS.value)}.",
        "",
        tables.maskgit_table(maskgit, title="MaskGIT (FID, precision, recall, usage)"),
        tables.uvim_table(uvim, title="UViM (Table 2)"),
    ])
    print(text)
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            f.write(text)


if __name__ == "__main__":
    cli.run(main)
