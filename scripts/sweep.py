"""The codebook-size study (FSQ paper, Figure 3): VQ vs FSQ MaskGIT runs over codebook sizes.

    python scripts/sweep.py --config configs/sweeps/codebook_size.py:tiny --workdir runs/sweep \
        [--config.log2_sizes='(4,10,16)'] [--config.tokenizer.total_steps=100] [--restart]

Any field of the sweep config, and any field of its stage sections (`tokenizer.*`,
`transformer.*`, overrides of the MaskGIT presets), can be set on the command line. Finished runs
are reused; see `maskgit.sweep` for what is measured.
"""

from __future__ import annotations

import os
import shlex
import sys

from absl import flags
from ml_collections import config_flags

from fsq_jax.config_lib import files
from fsq_jax.train import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", f"{files.resolve('sweeps/codebook_size.py')}:tiny", "Sweep config file and preset.",
    lock_config=False, accept_new_attributes=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory of the sweep.", required=True)
_RESTART = flags.DEFINE_bool("restart", False, "Retrain every run instead of reusing them.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the runs and their stage configs' main "
                             "fields, and train nothing.")
_JOBS = flags.DEFINE_integer("jobs", 1, "Runs trained at once, each in its own process (0: as "
                             "many as there are CPU cores; a run without the adversarial phase "
                             "keeps about one core busy).", lower_bound=0)
_ONLY = flags.DEFINE_string("only", None, "Train and measure only this run (e.g. "
                            "fsq_log2size10) and write no sweep outputs (what each of the --jobs "
                            "processes does).")
_CACHE = flags.DEFINE_string(
    "compilation_cache", None, "Persistent XLA compilation cache, so identical programs (the "
    "Inception network of every FID evaluation) compile once (default: "
    "$JAX_COMPILATION_CACHE_DIR or ~/.cache/fsq_jax/compilation_cache; '' disables).")


def main(argv: list[str]) -> None:
    cli.start(argv)
    from maskgit import pipeline, sweep

    config = _CONFIG.value
    try:
        sweep.check_config(config)
    except ValueError as error:
        sys.exit(f"config error: {error}")
    if _DRY_RUN.value:
        for line in sweep.describe(config):
            print(line)
        return
    cli.enable_compilation_cache(_CACHE.value)
    from fsq_jax.train import concurrent_runs  # its failures end in one line (cli)

    parallel = _JOBS.value or concurrent_runs.default_parallelism(len(sweep.plan(config)))
    try:
        sweep.run_sweep(config, _WORKDIR.value, restart=_RESTART.value, parallel=parallel,
                        job_command=one_run_command, only=_ONLY.value,
                        command=shlex.join(["python", "scripts/sweep.py", *sys.argv[1:]]))
    except pipeline.StagePreemptedError as stopped:
        sys.exit(f"sweep stopped: {stopped}")


def one_run_command(name: str) -> list[str]:
    """This very command (same config and overrides), told to do run `name` alone."""
    return [sys.executable, os.path.abspath(__file__), *sys.argv[1:], f"--only={name}",
            "--jobs=1"]


if __name__ == "__main__":
    cli.run(main)
