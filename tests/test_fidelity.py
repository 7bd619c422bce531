"""docs/fidelity.md is enforced: every row of its checked tables must hold for the built configs.

A checked table is one whose header is exactly `| preset | field | value | source | test |`
(the format is described at the top of docs/fidelity.md). Each row says: the config that
`fsq_jax.config_lib.load(preset)` builds has `field == ast.literal_eval(value)`. `{a,b}` groups
in the preset or the field expand to one check per combination. The test column names the tests
that check the behaviour behind the value; each must exist. A drifting preset, a renamed field
or a stale row fails here.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import pathlib
import re

import ml_collections
import pytest

from fsq_jax import config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIDELITY = ROOT / "docs" / "fidelity.md"
HEADER = "| preset | field | value | source | test |"

# Presets that must have rows (`{a,b}` groups expand). Extend this when a preset file gains
# paper settings.
REQUIRED_PRESETS = (
    "maskgit/tokenizer.py:{fsq,vq},paper",
    "maskgit/transformer.py:{fsq,vq},paper",
    "sweeps/codebook_size.py:paper",
    "uvim/{depth,colorization,panoptic}.py:{fsq,vq},paper,{stage1,stage2}",
)


@dataclasses.dataclass(frozen=True)
class Row:
    """One checked table row, as written (before brace expansion)."""

    line: int  # 1-based line number in docs/fidelity.md
    preset: str
    field: str
    value: str
    source: str
    test: str

    def __str__(self) -> str:
        return f"docs/fidelity.md:{self.line}: {self.preset} {self.field}"


def expand(text: str) -> list[str]:
    """Shell-style brace expansion: 'a/{x,y}.py:{1,2}' -> a/x.py:1, a/x.py:2, a/y.py:1, ..."""
    parts = re.split(r"(\{[^{}]*\})", text)
    choices = [p[1:-1].split(",") if p.startswith("{") else [p] for p in parts]
    return ["".join(combo) for combo in itertools.product(*choices)]


def _code(cell: str, row: str, column: str) -> str:
    """The text inside a cell's single pair of backticks."""
    match = re.fullmatch(r"`([^`]+)`", cell.strip())
    if not match:
        raise ValueError(f"{row}: the {column} cell must be one backticked item, got {cell!r}")
    return match.group(1)


def parse(text: str) -> list[Row]:
    """The rows of every checked table of a fidelity document."""
    rows: list[Row] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        if lines[index].strip() != HEADER:
            index += 1
            continue
        index += 2  # the header and its |---| line
        while index < len(lines) and lines[index].startswith("|"):
            cells = [c.strip() for c in lines[index].strip().strip("|").split("|")]
            where = f"docs/fidelity.md:{index + 1}"
            if len(cells) != 5:
                raise ValueError(f"{where}: a checked row needs 5 cells, got {len(cells)}")
            preset, field, value = (_code(c, where, name) for c, name in
                                    zip(cells[:3], ("preset", "field", "value")))
            rows.append(Row(index + 1, preset, field, value, cells[3], cells[4]))
            index += 1
    return rows


def get_field(config: ml_collections.ConfigDict, dotted: str):
    """config.a.b for 'a.b'; KeyError naming the missing part."""
    node = config
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise KeyError(f"no field {part!r} in {dotted!r}")
        node = node[part]
    return node


def same(actual, expected) -> bool:
    """Equal values of compatible kinds (a bool only equals a bool; lists read as tuples)."""
    actual = tuple(actual) if isinstance(actual, list) else actual
    expected = tuple(expected) if isinstance(expected, list) else expected
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(actual) is type(expected) and actual == expected
    if isinstance(expected, str) or isinstance(actual, str):
        return isinstance(actual, str) and actual == expected
    return actual == expected


ROWS = parse(FIDELITY.read_text())
_CONFIGS: dict[str, ml_collections.ConfigDict] = {}


def _load(spec: str) -> ml_collections.ConfigDict:
    if spec not in _CONFIGS:
        _CONFIGS[spec] = config_lib.load(spec)
    return _CONFIGS[spec]


def test_the_document_has_checked_rows():
    assert len(ROWS) > 50


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_row_holds_for_the_built_config(row):
    expected = ast.literal_eval(row.value)
    for spec in expand(row.preset):
        config = _load(spec)
        for field in expand(row.field):
            try:
                actual = get_field(config, field)
            except KeyError as error:
                pytest.fail(f"{row}: {spec}: {error}")
            assert same(actual, expected), (
                f"{row}: {spec} has {field} = {actual!r}, the table says {expected!r}")


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_row_names_its_source_and_existing_tests(row):
    assert row.source and row.source != "-", f"{row}: no source"
    if row.test.strip() == "-":
        return
    for reference in re.findall(r"`([^`]+)`", row.test):
        path, _, name = reference.partition("::")
        file = ROOT / path
        assert file.is_file(), f"{row}: test file {path} does not exist"
        test = name.split("[")[0]
        assert re.search(rf"^def {re.escape(test)}\(", file.read_text(), re.M), (
            f"{row}: {path} has no test {test}")


@pytest.mark.parametrize("required", [s for r in REQUIRED_PRESETS for s in expand(r)])
def test_every_paper_preset_has_rows(required):
    covered = {spec for row in ROWS for spec in expand(row.preset)}
    assert required in covered, f"docs/fidelity.md has no checked row for {required}"


def test_the_checker_catches_a_drifting_value():
    """The parser and comparison are real: a changed value, a missing field and a malformed
    cell all fail."""
    text = "\n".join([
        HEADER, "|---|---|---|---|---|",
        "| `maskgit/transformer.py:{fsq,vq},paper` | `model.{num_layers,num_heads}` | `24` "
        "| x | - |",
    ])
    (row,) = parse(text)
    assert [s for s in expand(row.preset)] == ["maskgit/transformer.py:fsq,paper",
                                               "maskgit/transformer.py:vq,paper"]
    config = _load("maskgit/transformer.py:fsq,paper")
    assert same(get_field(config, "model.num_layers"), 24)
    assert not same(get_field(config, "model.num_heads"), 24)
    assert not same(get_field(config, "model.dropout_rate"), False)
    assert not same(1, True) and same((1, 2), [1, 2]) and not same("0.1", 0.1)
    with pytest.raises(KeyError, match="no field 'depth'"):
        get_field(config, "model.depth")
    with pytest.raises(ValueError, match="value cell"):
        parse(HEADER + "\n|---|---|---|---|---|\n| `a.py` | `b` | 3 | x | - |")


def test_the_sweep_rows_reach_every_run():
    """The sweep's rows are overrides; the stage configs of each run must carry them."""
    from maskgit import pipeline, sweep

    config = _load("sweeps/codebook_size.py:paper")
    for run in sweep.plan(config)[:2]:
        tokenizer, transformer = pipeline.configs_for(run.quantizer, config.maskgit_size,
                                                      sweep.run_overrides(config, run))
        assert (tokenizer.total_steps, tokenizer.batch_size) == (500_000, 256)
        assert (transformer.total_steps, transformer.batch_size) == (1_000_000, 256)
        assert tokenizer.data.image_size == transformer.data.image_size == 128
        assert transformer.sampling.guidance_scale == 0.0
        assert transformer.masking.label_dropout == 0.0
        assert transformer.masking.min_ratio == 0.45  # A.4.1: the masking floor stays
