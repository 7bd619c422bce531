"""Trains any task on the shared loop: `scripts/train.py --config configs/….py:args --workdir DIR`.

Every config field can be overridden with `--config.field=value`. Multi-host runs either rely on
the environment (SLURM, TPU pods, JAX_COORDINATOR_ADDRESS) or pass the coordinator flags.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from fsq_jax import data, train
from fsq_jax.train import cli, distributed

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/autoencoder.py:fsq,tiny", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, images and results.")
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
        results = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except train.ConfigError as e:
        sys.exit(f"config error: {e}")
    except train.NonFiniteError as e:
        sys.exit(f"training stopped: {e}")
    except train.CheckpointError as e:
        sys.exit(f"cannot resume: {e}")
    except (FileNotFoundError, data.CorruptImageError) as e:  # e.g. a TFDS dataset not built
        sys.exit(f"data error: {e}")
    if results["preempted"]:
        logging.warning(
            "stopped early at step %d; rerun the same command to resume", results["step"]
        )


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
