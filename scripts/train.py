"""Trains any task on the shared loop: `scripts/train.py --config configs/….py:args --workdir DIR`.

Every config field can be overridden with `--config.field=value`. Multi-host runs either rely on
the environment (SLURM, TPU pods, JAX_COORDINATOR_ADDRESS) or pass the coordinator flags.
"""

from __future__ import annotations

import sys

from absl import flags, logging

from fsq_jax import data, train
from fsq_jax.train import cli

FLAGS = flags.FLAGS
cli.define_run_flags("Directory for checkpoints, metrics, images and results.")
flags.adopt_module_key_flags(cli)  # --help lists the shared run flags
_CACHE = flags.DEFINE_string(
    "compilation_cache", None, "Persistent XLA compilation cache, so a rerun or a resumed run "
    "does not compile again (default: $JAX_COMPILATION_CACHE_DIR or "
    "~/.cache/fsq_jax/compilation_cache; '' disables).")


def main(argv: list[str]) -> None:
    cli.start_run(argv)
    cli.enable_compilation_cache(_CACHE.value)
    try:
        results = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except train.ConfigError as e:
        sys.exit(f"config error: {e}")
    except train.NonFiniteError as e:
        sys.exit(f"training stopped: {e}")
    except train.CheckpointError as e:
        sys.exit(f"cannot resume: {e}")
    except train.WorkdirError as e:  # workdir held by another run, checkpoint not saved
        sys.exit(str(e))
    except (FileNotFoundError, data.DataError) as e:  # e.g. a TFDS dataset not built
        sys.exit(f"data error: {e}")
    except Exception as e:  # disk full / permission denied anywhere: one line with the path
        line = train.error_line(e)
        if line is None:
            raise
        sys.exit(line)
    if results["preempted"]:
        logging.warning(
            "stopped early at step %d; rerun the same command to resume", results["step"]
        )


if __name__ == "__main__":
    cli.run(main)
