"""Evaluates the latest checkpoint of a workdir and writes `workdir/evaluation.json`.

`scripts/evaluate.py --config configs/….py:args --workdir DIR` runs the task's eval step over
`eval_steps` validation batches and its evaluators (FID, PQ, codebook usage, ...). It only reads
the workdir otherwise (safe beside a live training run): checkpoints are never moved and the
training run's `results.json` is left as it is.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from fsq_jax import train
from fsq_jax.train import cli

FLAGS = flags.FLAGS
cli.define_run_flags("Training workdir holding checkpoints/.")


def main(argv: list[str]) -> None:
    cli.start_run(argv)
    try:
        results = train.evaluate(FLAGS.config, FLAGS.workdir)
    except train.ConfigError as e:
        sys.exit(f"config error: {e}")
    except (FileNotFoundError, train.CheckpointError) as e:
        sys.exit(f"evaluation failed: {e}")
    except Exception as e:  # disk full / permission denied: one line with the path
        line = train.error_line(e)
        if line is None:
            raise
        sys.exit(f"evaluation failed: {line}")
    print(json.dumps(results, indent=2, sort_keys=True))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
