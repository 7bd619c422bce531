"""Trivial baselines a UViM model must beat, scored with the task's own metric (uvim.baselines).

    python scripts/baselines.py --config configs/uvim/depth.py:fsq,tiny [--num_batches 8]
"""

from __future__ import annotations

import json

from absl import flags
from ml_collections import config_flags

from fsq_jax.train import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/uvim/*.py preset.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 8, "Validation (and training) batches.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Examples per batch.")
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
    cli.start(argv)
    from uvim import baselines

    results = baselines.evaluate_baseline(_CONFIG.value, _NUM_BATCHES.value, _BATCH_SIZE.value)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    cli.run(main)
