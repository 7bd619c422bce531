"""Training curves of runs: each run's metrics.csv as PNGs, one per group of metrics.

    python scripts/plot_metrics.py --runs runs/maskgit/fsq_tiny/tokenizer [--out DIR]

Writes `curves_train.png`, `curves_eval.png`, `curves_evaluators.png`, `curves_optimizer.png`
and `curves_speed.png` (those with metrics) beside each metrics.csv, or under `--out` (one
subfolder per run when there are several).
A directory without a metrics.csv is searched for runs below it.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from fsq_jax.train import cli

_RUNS = flags.DEFINE_list("runs", None, "Run directories (or metrics.csv files, or folders "
                          "searched for runs).", required=True)
_OUT = flags.DEFINE_string("out", "", "Write the PNGs under this folder (default: beside each "
                           "metrics.csv).")


def _csv_files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path!r} is neither a metrics.csv nor a directory")
    found = sorted(os.path.join(directory, "metrics.csv")
                   for directory, _, names in os.walk(path) if "metrics.csv" in names)
    if not found:
        raise FileNotFoundError(f"no metrics.csv under {path!r}")
    return found


def main(argv: list[str]) -> None:
    cli.start(argv)
    from fsq_jax.reporting import curves

    try:
        targets = [csv for path in _RUNS.value for csv in _csv_files(path)]
        runs = [os.path.dirname(os.path.abspath(csv)) for csv in targets]
        common = os.path.commonpath(runs)
        for csv_path, run in zip(targets, runs):
            # --out DIR: DIR/<the run's path below the runs' common folder>.
            out = os.path.normpath(os.path.join(_OUT.value, os.path.relpath(run, common))
                                   ) if _OUT.value else run
            written = curves.plot_metrics(csv_path, out)
            print(f"{csv_path}: {', '.join(str(p) for p in written.values()) or 'no metrics'}")
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    cli.run(main)
