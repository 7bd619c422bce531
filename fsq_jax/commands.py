"""The console commands of an installed fsq-jax (`fsq-train`, `fsq-evaluate`, ...): each runs the
very file `python scripts/<name>.py` runs, so a command and its script never differ.

The wheel ships `scripts/` as `fsq_jax/scripts/` and `configs/` as `fsq_jax/configs/` (setup.py).
A `--config` whose file is not where it says (`maskgit/tokenizer.py:fsq,tiny`, or
`configs/maskgit/tokenizer.py:fsq,tiny` outside a checkout) is looked up among the shipped
configs (`fsq_jax.config_lib.files.resolve`), so the README's commands work from any directory.
"""

from __future__ import annotations

import re
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

from fsq_jax.config_lib import files

# The scripts behind the console commands (pyproject.toml [project.scripts]).
SCRIPTS = ("train", "evaluate", "sample", "sweep", "tables", "plot_metrics", "pretokenize",
           "demo")
_CONFIG_FLAG = re.compile(r"^--?config(=|$)")


def scripts_dir() -> Path:
    """The scripts an installed package ships (fsq_jax/scripts), else the checkout's scripts/."""
    installed = Path(__file__).resolve().parent / "scripts"
    return installed if installed.is_dir() else Path(__file__).resolve().parents[1] / "scripts"


def _resolved_spec(spec: str) -> str:
    """`path[:arg]` with the path made absolute when it names a shipped config file."""
    path, colon, arg = spec.partition(":")
    if not path or Path(path).is_file():
        return spec
    try:
        return f"{files.resolve(path)}{colon}{arg}"
    except FileNotFoundError:
        return spec  # the script reports the missing file itself


def resolve_config_args(argv: Sequence[str]) -> list[str]:
    """argv with the value of `--config SPEC` / `--config=SPEC` resolved (overrides such as
    `--config.total_steps=5` are left alone)."""
    out, expects_value = [], False
    for arg in argv:
        if expects_value:
            out.append(_resolved_spec(arg))
            expects_value = False
        elif (match := _CONFIG_FLAG.match(arg)) is None:
            out.append(arg)
        elif match.group(1) == "=":
            flag, _, spec = arg.partition("=")
            out.append(f"{flag}={_resolved_spec(spec)}")
        else:
            out.append(arg)
            expects_value = True
    return out


def run_script(name: str, argv: Sequence[str] | None = None) -> None:
    """Runs scripts/<name>.py as `python scripts/<name>.py ARGS` would (`argv`: the arguments,
    default sys.argv[1:])."""
    path = scripts_dir() / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: this fsq-jax install has no {name!r} script")
    args = list(sys.argv[1:] if argv is None else argv)
    sys.argv = [str(path), *resolve_config_args(args)]
    runpy.run_path(str(path), run_name="__main__")


def train() -> None:
    """`fsq-train`: scripts/train.py."""
    run_script("train")


def evaluate() -> None:
    """`fsq-evaluate`: scripts/evaluate.py."""
    run_script("evaluate")


def sample() -> None:
    """`fsq-sample`: scripts/sample.py."""
    run_script("sample")


def sweep() -> None:
    """`fsq-sweep`: scripts/sweep.py."""
    run_script("sweep")


def tables() -> None:
    """`fsq-tables`: scripts/tables.py."""
    run_script("tables")


def plot_metrics() -> None:
    """`fsq-plot-metrics`: scripts/plot_metrics.py."""
    run_script("plot_metrics")


def pretokenize() -> None:
    """`fsq-pretokenize`: scripts/pretokenize.py."""
    run_script("pretokenize")


def demo() -> None:
    """`fsq-demo`: scripts/demo.py."""
    run_script("demo")
