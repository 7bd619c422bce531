"""README result blocks come from reports: spliced between markers, pictures copied."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fsq_jax.reporting import readme

ROOT = Path(__file__).resolve().parents[1]


def _setup(tmp_path):
    report_dir = tmp_path / "runs" / "demo"
    report_dir.mkdir(parents=True)
    (report_dir / "fsq_samples.png").write_bytes(b"png-bytes")
    (report_dir / "report.md").write_text(
        "# demo\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n```\n# not a heading\n```\n\n"
        "![FSQ samples](fsq_samples.png)\n")
    (tmp_path / "README.md").write_text(
        "# project\n\nintro\n<!-- BEGIN demo -->\nold numbers\n<!-- END demo -->\ntail\n")
    return report_dir


def test_the_block_is_replaced_and_pictures_copied(tmp_path):
    report_dir = _setup(tmp_path)
    readme.update(str(tmp_path / "README.md"), "demo", str(report_dir / "report.md"),
                  str(tmp_path / "docs" / "demo"))
    text = (tmp_path / "README.md").read_text()
    assert text == ("# project\n\nintro\n<!-- BEGIN demo -->\n#### demo\n\n| a | b |\n|---|---|\n"
                    "| 1 | 2 |\n\n```\n# not a heading\n```\n\n"
                    "![FSQ samples](docs/demo/fsq_samples.png)\n<!-- END demo -->\ntail\n")
    assert (tmp_path / "docs" / "demo" / "fsq_samples.png").read_bytes() == b"png-bytes"


def test_missing_markers_or_pictures_are_errors_that_change_nothing(tmp_path):
    report_dir = _setup(tmp_path)
    (tmp_path / "README.md").write_text("# project\n")
    with pytest.raises(ValueError, match="no '<!-- BEGIN demo -->'"):
        readme.update(str(tmp_path / "README.md"), "demo", str(report_dir / "report.md"),
                      str(tmp_path / "docs"))
    assert (tmp_path / "README.md").read_text() == "# project\n"
    (report_dir / "fsq_samples.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"fsq_samples\.png"):
        readme.adopt_pictures("![x](fsq_samples.png)", str(report_dir), str(tmp_path),
                              str(tmp_path / "docs"))


def test_the_script_updates_the_readme(tmp_path):
    report_dir = _setup(tmp_path)
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "update_readme.py"),
         f"--report={report_dir / 'report.md'}", f"--readme={tmp_path / 'README.md'}",
         f"--pictures={tmp_path / 'docs' / 'demo'}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "| 1 | 2 |" in (tmp_path / "README.md").read_text()
