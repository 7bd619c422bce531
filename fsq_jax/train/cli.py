"""What every script's command line shares: absl flags, `--config file.py:preset` with
`--config.field=value` overrides (ml_collections config flags, as the flax examples), one-line
errors, quiet library logs, the persistent compilation cache and multi-host start-up.

A failure the user can act on ends in one line saying what failed, where (the field, the file,
the path) and what to do: bad flags and config files while the flags are parsed (ml_collections
would raise a traceback from inside flag parsing, or hand the script a config that fails later
on first use), and config, data, checkpoint, workdir and storage errors from `main`
(`failure_line`). `--verbose` shows the traceback instead; bugs always keep theirs.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from absl import app, flags
from ml_collections import config_flags

from fsq_jax.train import distributed

_OVERRIDE = re.compile(r"^--?config\.([\w.]+)(=.*)?$")
_VERBOSE = flags.DEFINE_bool("verbose", False, "On failure, show the full traceback instead of "
                             "one line saying what failed and what to do.")


def define_run_flags(workdir_help: str) -> None:
    """Defines --config, --workdir and the multi-host flags of a train/evaluate entry point."""
    config_flags.DEFINE_config_file(
        "config", None, "Config file and preset, e.g. configs/autoencoder.py:fsq,tiny; any field "
        "can be overridden with --config.<field>=<value>", lock_config=True)
    flags.DEFINE_string("workdir", None, workdir_help)
    require_nonempty("workdir")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host runs).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host runs).")
    flags.DEFINE_integer("process_id", None, "Index of this process (multi-host runs).")
    flags.DEFINE_string("cpu_collectives", None,
                        "CPU collectives for multi-process CPU runs: gloo.")
    flags.mark_flags_as_required(["config", "workdir"])


def require_nonempty(name: str) -> None:
    """`--name=` (an empty path) is refused while parsing, naming the flag."""
    flags.register_validator(name, lambda value: value is None or bool(str(value).strip()),
                             message=f"--{name} is empty: give a directory")


def start(argv: Sequence[str]) -> None:
    """Rejects stray arguments and quiets library logs (every script's first line)."""
    if len(argv) > 1:
        sys.exit(f"flag error: unexpected arguments: {' '.join(argv[1:])} (flags are "
                 "--name=value; see --help)")
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


def _verbose_requested(argv: Sequence[str]) -> bool:
    return any(re.fullmatch(r"--?verbose(=(true|1|yes))?", a, re.IGNORECASE) for a in argv)


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _config_arg(argv: Sequence[str]) -> str:
    """`--config=<value>` as given (either `--config=x` or `--config x`)."""
    for index, arg in enumerate(argv):
        if re.match(r"^--?config=", arg):
            return arg
        if re.fullmatch(r"--?config", arg) and index + 1 < len(argv):
            return f"--config={argv[index + 1]}"
    return "--config"


def _flag_error_line(error: flags.Error) -> str:
    """One line for a flag that failed to parse; a config file's own error (ml_collections puts
    its traceback into the message) is reduced to the flag and the exception's last line."""
    text = str(error)
    head = re.match(r"flag (--[\w.]+=.*?): Error whilst parsing config file", text)
    if head:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        last = re.sub(r"^\w+(Error|Exception): ", "", lines[-1])
        return f"config error: {head.group(1)}: {last}"
    return f"flag error: {_one_line(text)}"


def _check_config_files() -> None:
    """ml_collections hands a config flag whose file cannot be loaded an object that raises on
    first use, far from the flag: end here instead, naming the flag and the file."""
    for name in list(flags.FLAGS):
        flag = flags.FLAGS[name]
        if type(flag.value).__name__ != "_ErrorConfig":
            continue
        spec = str(getattr(flag, "config_filename", "") or flag.serialize())
        path = spec.split(":", 1)[0]
        if not path:
            problem = "no config file given"
        elif os.path.isdir(path):
            problem = f"{path!r} is a directory, not a config file"
        elif not os.path.exists(path):
            problem = f"config file {path!r} not found (relative to {os.getcwd()})"
        else:
            problem = _one_line(getattr(flag.value, "_error", "cannot be loaded"))
        if _verbose_requested(sys.argv) and isinstance(getattr(flag.value, "_error", None),
                                                       BaseException):
            raise flag.value._error
        sys.exit(f"config error: --{name}={spec}: {problem}")


def parse_flags(argv: Sequence[str]) -> list[str]:
    """`flags_parser` for `absl.app.run`: parses flags, exits with one clear line on bad ones
    (with `--verbose`, the traceback)."""
    verbose = _verbose_requested(argv)
    try:
        parsed = flags.FLAGS(list(argv))
    except flags.Error as e:
        if verbose:
            raise
        sys.exit(_flag_error_line(e))
    except (AttributeError, KeyError) as e:
        if verbose:
            raise
        if "get_config" in str(e):
            sys.exit(f"config error: {_config_arg(argv)}: the config file has no "
                     "get_config(arg) function")
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
    except Exception as e:  # a config file that fails to load (a syntax error, a bug)
        if verbose:
            raise
        sys.exit(f"config error: {_config_arg(argv)}: {type(e).__name__}: {_one_line(e)}")
    _check_config_files()
    return parsed


def failure_line(error: BaseException) -> str | None:
    """One line for a failure the user can act on (a bad config field, unusable data, a
    checkpoint that cannot be used, a workdir in use, a full disk, a missing file), naming what
    and where; None for anything else (a bug keeps its traceback)."""
    from fsq_jax.config_lib import ConfigError
    from fsq_jax.data.errors import DataError
    from fsq_jax.train.checkpoint import CheckpointError
    from fsq_jax.train.concurrent_runs import JobFailedError, JobsStoppedError
    from fsq_jax.train.loop import NonFiniteError
    from fsq_jax.train.npz_init import CheckpointMismatchError
    from fsq_jax.train.workdir import WorkdirError, _our_frame, error_line

    if isinstance(error, ConfigError):
        return f"config error: {_one_line(error)}"
    if isinstance(error, NonFiniteError):
        return f"training stopped: {_one_line(error)}"
    if isinstance(error, CheckpointError):
        return f"cannot resume: {_one_line(error)}"
    if isinstance(error, CheckpointMismatchError):
        return f"weights error: {_one_line(error)}"
    if isinstance(error, WorkdirError):
        return _one_line(error)
    if isinstance(error, JobFailedError):  # the run's own lines were printed as they came
        return _one_line(error)
    if isinstance(error, JobsStoppedError):
        return f"stopped on request: {_one_line(error)}"
    if isinstance(error, DataError):
        return f"data error: {_one_line(error)}"
    if isinstance(error, FileNotFoundError):
        if not error.filename:  # our own message names the file and what it is for
            return f"missing file: {_one_line(error)}"
        where = _our_frame(error)
        return (f"missing file: {error.filename} ({error.strerror}"
                f"{', while in ' + where if where else ''})")
    line = error_line(error)  # a storage error (or missing file) with its path and the action
    return None if line is None else _one_line(line)


def fail(line: str, error: BaseException) -> NoReturn:
    """Ends the script with `line`, or under `--verbose` re-raises `error` (its traceback)."""
    if _VERBOSE.value:
        raise error
    sys.exit(_one_line(line))


def _failures_in_one_line(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
    @functools.wraps(main)
    def wrapped(argv: list[str]) -> None:
        from fsq_jax.train.stopping import StopRequestedError

        try:
            main(argv)
        except StopRequestedError as stopped:  # SIGTERM in work outside a training run's loop
            print(f"stopped on request: {_one_line(stopped)}", file=sys.stderr)
        except Exception as error:
            line = failure_line(error)
            if line is None:
                raise
            fail(line, error)

    return wrapped


def run(main: Callable[[list[str]], None]) -> None:
    """`absl.app.run(main)` with `parse_flags`, every known failure of `main` in one line
    (every script's last line)."""
    app.run(_failures_in_one_line(main), flags_parser=parse_flags)


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
