"""Trains any task on the shared loop: `scripts/train.py --config configs/….py:args --workdir DIR`.

Every config field can be overridden with `--config.field=value`. Multi-host runs either rely on
the environment (SLURM, TPU pods, JAX_COORDINATOR_ADDRESS) or pass the coordinator flags.
Rerunning the same command resumes an interrupted run and leaves a finished one as it is; a config
that changes the run's experiment is refused unless `--allow_config_change`.
"""

from __future__ import annotations

from absl import flags, logging

from fsq_jax import train
from fsq_jax.train import cli

FLAGS = flags.FLAGS
cli.define_run_flags("Directory for checkpoints, metrics, images and results.")
flags.adopt_module_key_flags(cli)  # --help lists the shared run flags
_CACHE = flags.DEFINE_string(
    "compilation_cache", None, "Persistent XLA compilation cache, so a rerun or a resumed run "
    "does not compile again (default: $JAX_COMPILATION_CACHE_DIR or "
    "~/.cache/fsq_jax/compilation_cache; '' disables).")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume the run in --workdir although this config differs "
    "from its config.json in fields that change the experiment (model, data, optimiser, ...); "
    "without it such a rerun is refused, naming the fields.")


def main(argv: list[str]) -> None:
    cli.start_run(argv)
    cli.enable_compilation_cache(_CACHE.value)
    # Every failure the user can act on (config, data, checkpoint, lock, disk full, missing
    # file) ends in one line via cli.run; --verbose shows the traceback.
    results = train.train_and_evaluate(FLAGS.config, FLAGS.workdir,
                                       allow_config_change=_ALLOW_CONFIG_CHANGE.value)
    if results["preempted"]:
        logging.warning(
            "stopped early at step %d; rerun the same command to resume", results["step"]
        )


if __name__ == "__main__":
    cli.run(main)
