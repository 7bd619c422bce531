"""Configs are data: every preset of every config file validates, one preset language parses
them, and the quantizer of any preset is swapped by one field."""

from __future__ import annotations

import ast
import itertools
import json
import pathlib

import ml_collections
import pytest

from fsq_jax import config_lib, run_dir, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUANTIZERS = ("fsq", "vq")
# Every config file of a training task with the presets it offers (each combination is checked).
TRAINING_CONFIGS = {
    "autoencoder.py": [QUANTIZERS, ("tiny", "small")],
    "maskgit/tokenizer.py": [QUANTIZERS, ("tiny", "paper")],
    "maskgit/transformer.py": [QUANTIZERS, ("tiny", "paper")],
    **{f"uvim/{task}.py": [QUANTIZERS, ("tiny", "paper"), ("stage1", "stage2"),
                           ("", "nocontext")] for task in ("depth", "colorization", "panoptic")},
}
# The frozen stage-I preset a stage-II preset reads.
FROZEN = {"maskgit/transformer.py": lambda arg: f"maskgit/tokenizer.py:{arg}"}


def _presets(path: str) -> list[str]:
    return [",".join(p for p in combo if p)
            for combo in itertools.product(*TRAINING_CONFIGS[path])]


def _with_frozen_stage(path: str, arg: str, config: ml_collections.ConfigDict,
                       tmp_path: pathlib.Path) -> None:
    """Points a stage-II config at a directory holding its stage-I preset's config.json."""
    if path in FROZEN:
        field, stage1 = "tokenizer_workdir", FROZEN[path](arg)
    elif "stage2" in arg:
        field, stage1 = "stage1_workdir", f"{path}:{arg.replace('stage2', 'stage1')}"
    else:
        return
    workdir = tmp_path / "stage1"
    workdir.mkdir(exist_ok=True)
    run_dir.write_json(str(workdir / "config.json"), run_dir.config_json(config_lib.load(stage1)))
    config[field] = str(workdir)


@pytest.mark.parametrize("path, arg", [(p, a) for p in TRAINING_CONFIGS for a in _presets(p)])
def test_every_preset_of_every_config_file_validates(tmp_path, path, arg):
    config = config_lib.load(f"{path}:{arg}")
    _with_frozen_stage(path, arg, config, tmp_path)
    typed = train.validate(config)
    assert isinstance(typed, train.resolve_task(config).config_schema)


# Stage II of MaskGIT has no quantizer of its own (it reads its tokenizer's).
@pytest.mark.parametrize("path", sorted(set(TRAINING_CONFIGS) - {"maskgit/transformer.py"}))
@pytest.mark.parametrize("quantizer", ["vq", "lfq", "residual_fsq"])
def test_quantizer_name_swaps_the_quantizer_of_any_preset(path, quantizer):
    config = config_lib.load(f"{path}:fsq,tiny")
    config.quantizer.name = quantizer
    typed = train.validate(config)
    assert type(typed.quantizer).__name__ == {"vq": "VQ", "lfq": "LFQ",
                                              "residual_fsq": "ResidualFSQ"}[quantizer]
    # The same as the preset of that quantizer, when the file offers it.
    if quantizer == "vq":
        assert config == config_lib.load(f"{path}:vq,tiny") or "maskgit" in path
        assert config.quantizer == config_lib.load(f"{path}:vq,tiny").quantizer


def test_sweep_presets_load():
    for arg in ("tiny", "paper"):
        config = config_lib.load(f"sweeps/codebook_size.py:{arg}")
        assert set(config.quantizers) == {"vq", "fsq"}


def test_config_files_import_only_ml_collections_and_fsq_jax_config_helpers():
    for path in sorted((ROOT / "configs").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name == "fsq_jax":  # `from fsq_jax import config_lib`
                    assert [a.name for a in node.names] == ["config_lib"], path
                else:
                    assert name.split(".")[0] in ("__future__", "ml_collections") or \
                        name.startswith("fsq_jax.config_lib"), f"{path}: imports {name}"


def test_configs_round_trip_through_config_json(tmp_path):
    """A run's stored config.json reads back as the very config that was written."""
    config = config_lib.load("maskgit/tokenizer.py:vq,tiny")
    run_dir.write_json(str(tmp_path / "config.json"), run_dir.config_json(config))
    assert json.dumps(run_dir.read_config(str(tmp_path)).to_dict(), sort_keys=True) == \
        json.dumps(config.to_dict(), sort_keys=True)


# -- the preset language ------------------------------------------------------------------------


def _spec():
    return {"quantizer": config_lib.Choice("fsq", ("fsq", "vq")),
            "size": config_lib.Choice("tiny", ("tiny", "paper")), "nosplit": False,
            "steps": 100, "scale": 1.0}


def test_parse_arg_defaults_choices_flags_and_values():
    assert config_lib.parse_arg(None, **_spec()).to_dict() == {
        "quantizer": "fsq", "size": "tiny", "nosplit": False, "steps": 100, "scale": 1.0}
    parsed = config_lib.parse_arg("vq, paper,nosplit,steps=300,scale=0.5", **_spec())
    assert parsed.to_dict() == {"quantizer": "vq", "size": "paper", "nosplit": True,
                                "steps": 300, "scale": 0.5}
    assert config_lib.parse_arg("size=paper,quantizer=vq", **_spec()).size == "paper"


@pytest.mark.parametrize("arg, message", [
    ("fsq,vq", "quantizer given twice ('fsq' and 'vq')"),
    ("tiny,size=paper", "size given twice"),
    ("tiniest", "unknown preset 'tiniest' (did you mean 'tiny'?)"),
    ("stepz=3", "unknown option 'stepz' (did you mean 'steps'?)"),
    ("steps=many", "steps='many' must be a int"),
    ("size=huge", "size='huge' must be one of tiny, paper"),
    ("nosplit=maybe", "nosplit='maybe' must be true or false"),
])
def test_parse_arg_errors_are_one_line_naming_the_token(arg, message):
    with pytest.raises(ValueError) as info:
        config_lib.parse_arg(arg, **_spec())
    assert message in str(info.value) and "\n" not in str(info.value)


def test_quantizer_presets_follow_table_1():
    for log2_size, levels in config_lib.RECOMMENDED_LEVELS.items():
        section = config_lib.quantizer("vq", log2_size)
        assert section.name == "vq" and section.fsq.levels == levels
        assert section.vq.codebook_size == 2**log2_size and section.lfq.dim == log2_size
    with pytest.raises(ValueError, match="no recommended FSQ levels for 2\\^5"):
        config_lib.quantizer("fsq", 5)
