"""Pre-tokenises stage II's training images into a token cache (see maskgit/token_cache.py).

    python scripts/pretokenize.py --config configs/maskgit/transformer.py:fsq,paper \
        --config.token_cache.dir=/data/tokens/imagenet_fsq

Training with the same `--config.token_cache.dir` then reads the cache instead of running the
frozen encoder in every step. A single-process training run builds a missing cache itself; build
it here first for a multi-host run (every host reads the same files).
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from fsq_jax import data
from fsq_jax.train import cli

config_flags.DEFINE_config_file("config", None, "A configs/maskgit/transformer.py preset.",
                                lock_config=True)
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
    cli.start(argv)
    from fsq_jax import train

    config = flags.FLAGS.config
    if not config.get("token_cache", {}).get("dir"):
        sys.exit("config error: --config.token_cache.dir: set the directory to write")
    try:
        train.validate(config)
        task = train.build_task(config)
        source = task.open_token_cache(log=lambda line: print(line, flush=True))
    except train.ConfigError as error:
        sys.exit(f"config error: {error}")
    except (FileNotFoundError, data.DataError, ValueError) as error:
        sys.exit(f"error: {error}")
    print(f"token cache {source.directory}: {len(source)} examples, "
          f"{source.meta['grid'][0]}x{source.meta['grid'][1]} tokens each")


if __name__ == "__main__":
    cli.run(main)
