"""Collects results.json files into markdown tables laid out like the paper's.

Prints (and with --out writes) the MaskGIT table and UViM Table 2, our numbers beside the
paper's, each with the config and checkpoint it came from.

    python scripts/tables.py --runs runs/ [--out runs/tables.md]
"""

from __future__ import annotations

import argparse
import sys

from fsq_jax.reporting import collect, tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=["runs"],
                        help="directories searched (recursively) for evaluated runs")
    parser.add_argument("--out", default="", help="also write the markdown to this file")
    args = parser.parse_args(argv)
    try:
        runs = list(collect.find_runs(args.runs))
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    maskgit, uvim = collect.collect(runs)
    text = "\n".join([
        f"Runs found: {len(runs)} under {', '.join(args.runs)}.",
        "",
        tables.maskgit_table(maskgit, title="MaskGIT (FID, precision, recall, usage)"),
        tables.uvim_table(uvim, title="UViM (Table 2)"),
    ])
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
