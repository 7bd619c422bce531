"""The package layout pyproject.toml cannot express: the repository's `configs/` and `scripts/`
ship inside the `fsq_jax` namespace of the wheel, as `fsq_jax/configs` and `fsq_jax/scripts`.

An installed fsq-jax then finds its config files and runs its scripts without a checkout
(`fsq_jax.config_lib.files`, `fsq_jax.commands`), and adds no generic top-level `configs` or
`scripts` package to site-packages. Everything else is in pyproject.toml.
"""

from __future__ import annotations

import os

from setuptools import setup

# Top-level packages shipped under their own names.
CODE = ("fsq_jax", "maskgit", "uvim")
# Repository folder -> the package it becomes in the wheel.
SHIPPED = {"configs": "fsq_jax.configs", "scripts": "fsq_jax.scripts"}


def packages_under(directory: str, package: str) -> list[str]:
    """`package` and its subpackages: every folder under `directory` holding a .py file."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d.isidentifier() and d != "__pycache__")
        if any(name.endswith(".py") for name in files):
            relative = os.path.relpath(root, directory)
            found.append(package if relative == "." else
                         ".".join([package, *relative.split(os.sep)]))
    return found


setup(
    packages=[p for name in CODE for p in packages_under(name, name)]
    + [p for folder, package in SHIPPED.items() for p in packages_under(folder, package)],
    package_dir={package: folder for folder, package in SHIPPED.items()},
)
