"""Config files by path: `load("maskgit/tokenizer.py:fsq,tiny")` is that file's get_config(arg).

Config files are data, read by path (as the `--config` flag does), never imported as a package,
so library code that starts from an experiment's preset (the demo, the sweeps) depends on the
file, not on a `configs` module.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections


def _configs_dir() -> Path:
    """The config tree: the copy an installed package ships (fsq_jax/configs, see setup.py),
    else the checkout's configs/ beside the fsq_jax package."""
    installed = Path(__file__).resolve().parents[1] / "configs"
    return installed if installed.is_dir() else Path(__file__).resolve().parents[2] / "configs"


# A relative config path that is not a file as given is looked up here.
CONFIGS_DIR = _configs_dir()


def resolve(path: str) -> Path:
    """A config file: relative paths are looked up under `CONFIGS_DIR` first ("maskgit/
    tokenizer.py"), then as given ("configs/maskgit/tokenizer.py", "/abs/my_config.py"), then
    under `CONFIGS_DIR` without a leading "configs/" (the repository's spelling, outside a
    checkout)."""
    candidates = [Path(path)] if Path(path).is_absolute() else [CONFIGS_DIR / path, Path(path)]
    parts = Path(path).parts
    if len(parts) > 1 and parts[0] == "configs":
        candidates.append(CONFIGS_DIR.joinpath(*parts[1:]))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"config file {path!r} not found (nor under {CONFIGS_DIR})")


def load(spec: str) -> ml_collections.ConfigDict:
    """'path/to/config.py[:arg]' -> that file's `get_config(arg)`.

    Raises:
      FileNotFoundError: no such config file.
      ValueError: the file has no get_config, or its preset argument is wrong.
    """
    path, _, arg = spec.partition(":")
    file = resolve(path)
    module_spec = importlib.util.spec_from_file_location(f"config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {str(file)!r} has no get_config(arg)")
    return module.get_config(arg or None)
