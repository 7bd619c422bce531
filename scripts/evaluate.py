"""Evaluates the latest checkpoint of a workdir and writes `workdir/results.json`.

`scripts/evaluate.py --config configs/….py:args --workdir DIR` runs the task's eval step over
`eval_steps` validation batches and its evaluators (FID, PQ, codebook usage, ...).
"""

from __future__ import annotations

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from fsq_jax import train
from fsq_jax.train import cli, distributed

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/autoencoder.py:fsq,tiny", lock_config=True
)
flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host runs).")
flags.DEFINE_integer("process_id", None, "Index of this process (multi-host runs).")
flags.DEFINE_string("cpu_collectives", None, "CPU collectives for multi-process CPU runs: gloo.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    cli.quiet_library_logs()
    distributed.initialize(
        FLAGS.coordinator_address,
        FLAGS.num_processes,
        FLAGS.process_id,
        cpu_collectives=FLAGS.cpu_collectives,
    )
    try:
        results = train.evaluate(FLAGS.config, FLAGS.workdir)
    except train.ConfigError as e:
        sys.exit(f"config error: {e}")
    except (FileNotFoundError, train.CheckpointError) as e:
        sys.exit(f"evaluation failed: {e}")
    print(json.dumps(results, indent=2, sort_keys=True))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
