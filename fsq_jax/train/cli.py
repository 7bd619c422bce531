"""What every script's command line shares: absl flags, `--config file.py:preset` with
`--config.field=value` overrides (ml_collections config flags, as the flax examples), one-line
errors, quiet library logs, the persistent compilation cache and multi-host start-up.

`--config.field=value` overrides naming a field the config does not have fail with one line that
names the override (ml_collections would otherwise raise a traceback from inside flag parsing).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Sequence

from absl import app, flags
from ml_collections import config_flags

from fsq_jax.train import distributed

_OVERRIDE = re.compile(r"^--?config\.([\w.]+)(=.*)?$")


def define_run_flags(workdir_help: str) -> None:
    """Defines --config, --workdir and the multi-host flags of a train/evaluate entry point."""
    config_flags.DEFINE_config_file(
        "config", None, "Config file and preset, e.g. configs/autoencoder.py:fsq,tiny; any field "
        "can be overridden with --config.<field>=<value>", lock_config=True)
    flags.DEFINE_string("workdir", None, workdir_help)
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host runs).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host runs).")
    flags.DEFINE_integer("process_id", None, "Index of this process (multi-host runs).")
    flags.DEFINE_string("cpu_collectives", None,
                        "CPU collectives for multi-process CPU runs: gloo.")
    flags.mark_flags_as_required(["config", "workdir"])


def start(argv: Sequence[str]) -> None:
    """Rejects stray arguments and quiets library logs (every script's first line)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    quiet_library_logs()


def start_run(argv: Sequence[str]) -> None:
    """`start`, then joins the multi-host run, if any (train / evaluate)."""
    start(argv)
    distributed.initialize(
        flags.FLAGS.coordinator_address,
        flags.FLAGS.num_processes,
        flags.FLAGS.process_id,
        cpu_collectives=flags.FLAGS.cpu_collectives,
    )


def enable_compilation_cache(directory: str | None) -> None:
    """JAX's persistent compilation cache, so a rerun, a resumed run or another run of the same
    programs does not compile them again. `directory`: None = $JAX_COMPILATION_CACHE_DIR, else
    ~/.cache/fsq_jax/compilation_cache; "" = off."""
    import jax

    if directory is None:
        directory = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
            os.path.expanduser("~"), ".cache", "fsq_jax", "compilation_cache")
    if directory:
        jax.config.update("jax_compilation_cache_dir", os.path.abspath(directory))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def parse_flags(argv: Sequence[str]) -> list[str]:
    """`flags_parser` for `absl.app.run`: parses flags, exits with one clear line on bad ones."""
    try:
        return flags.FLAGS(list(argv))
    except flags.Error as e:
        sys.exit(f"flag error: {e}")
    except (AttributeError, KeyError) as e:
        text = str(e.args[0] if e.args else e)
        name = re.search(r"(\w+)", text)
        missing = name.group(1) if name else text
        overrides = [a for a in argv if _OVERRIDE.match(a)]
        culprit = next(
            (a for a in overrides if re.search(rf"\.{re.escape(missing)}(\.|=|$)", a)),
            overrides[0] if overrides else "--config",
        )
        suggestion = re.search(r"Did you mean \W*(\w+)", text)
        hint = f"; did you mean {suggestion.group(1)!r}?" if suggestion else ""
        sys.exit(f"config error: {culprit}: the config has no field {missing!r}{hint}")


def run(main: Callable[[list[str]], None]) -> None:
    """`absl.app.run(main)` with `parse_flags` (every script's last line)."""
    app.run(main, flags_parser=parse_flags)


class _DropLibraryInfo(logging.Filter):
    """Drops INFO-and-below records logged from inside the named libraries."""

    def __init__(self, fragments: Sequence[str]):
        super().__init__()
        self._fragments = tuple(fragments)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not any(
            f in record.pathname for f in self._fragments
        )


def quiet_library_logs(libraries: Sequence[str] = ("orbax", "jax/_src", "clu")) -> None:
    """Keeps the console readable: library INFO lines (per-save orbax chatter) are dropped."""
    fragments = [f"{os.sep}{name}{os.sep}" for name in libraries]
    for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
        handler.addFilter(_DropLibraryInfo(fragments))
    logging.getLogger("absl").addFilter(_DropLibraryInfo(fragments))
