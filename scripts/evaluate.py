"""Evaluates the newest good checkpoint of a run, without changing its workdir.

    python scripts/evaluate.py --workdir DIR [--out results.json]
    python scripts/evaluate.py --workdir DIR --config configs/….py:preset --config.x=y

By default the run's own `config.json` is used, so no training override has to be typed again;
`--config` evaluates under another config instead. Runs the task's eval step over `eval_steps`
validation batches and its evaluators (FID, PQ, codebook usage, ...), prints the results as JSON
and, with `--out`, writes them there (`--out DIR/evaluation.json` puts them where
scripts/tables.py looks). Nothing in the workdir is moved or rewritten, so it is safe beside a live
training run.
"""

from __future__ import annotations

import json

from absl import flags
from ml_collections import config_flags

from fsq_jax.train import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and preset (default: the workdir's config.json).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run to evaluate.", required=True)
cli.require_nonempty("workdir")
_OUT = flags.DEFINE_string("out", "", "Also write the results to this JSON file.")


def main(argv: list[str]) -> None:
    cli.start(argv)
    from fsq_jax import run_dir, train

    try:  # other failures (config, data, storage) end in one line via cli.run
        config = _CONFIG.value or run_dir.read_config(_WORKDIR.value)
        results = train.evaluate(config, _WORKDIR.value)
    except (FileNotFoundError, train.CheckpointError) as e:
        detail = cli.failure_line(e) if getattr(e, "filename", None) else e
        cli.fail(f"evaluation failed: {detail}", e)
    except ValueError as e:  # config.json is not JSON
        if isinstance(e, train.ConfigError):
            raise
        cli.fail(f"evaluation failed: {e}", e)
    text = json.dumps(results, indent=2, sort_keys=True)
    print(text)
    if _OUT.value:
        run_dir.write_json(_OUT.value, results)


if __name__ == "__main__":
    cli.run(main)
