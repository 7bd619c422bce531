"""Config files by path: `load("maskgit/tokenizer.py:fsq,tiny")` is that file's get_config(arg).

Config files are data, read by path (as the `--config` flag does), never imported as a package,
so library code that starts from an experiment's preset (the demo, the sweeps) depends on the
file, not on a `configs` module.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections

# The repository's config tree; a path that is not a file as given is looked up here.
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"


def resolve(path: str) -> Path:
    """A config file: relative paths are looked up under `CONFIGS_DIR` first ("maskgit/
    tokenizer.py"), then as given ("configs/maskgit/tokenizer.py", "/abs/my_config.py")."""
    candidates = [Path(path)] if Path(path).is_absolute() else [CONFIGS_DIR / path, Path(path)]
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
