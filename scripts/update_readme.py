"""Puts a finished report into README.md: `--report runs/demo/report.md` replaces the README's
`<!-- BEGIN demo -->` ... `<!-- END demo -->` block with it and copies its pictures into
`--pictures docs/demo` (the README's numbers and figures come only from reports).

    python scripts/update_readme.py --report runs/demo/report.md --block demo --pictures docs/demo
"""

from __future__ import annotations

from absl import flags

from fsq_jax.train import cli

_REPORT = flags.DEFINE_string("report", "runs/demo/report.md", "The report.md to copy in.")
_BLOCK = flags.DEFINE_string("block", "demo", "Name of the README block to replace.")
_PICTURES = flags.DEFINE_string("pictures", "docs/demo", "Where the report's pictures go.")
_README = flags.DEFINE_string("readme", "README.md", "The README to update.")
_LEVELS = flags.DEFINE_integer("heading_levels", 3, "How much deeper the report's headings go.")


def main(argv: list[str]) -> None:
    cli.start(argv)
    from fsq_jax.reporting import readme

    readme.update(_README.value, _BLOCK.value, _REPORT.value, _PICTURES.value,
                  _LEVELS.value)
    print(f"{_README.value}: block {_BLOCK.value!r} now holds {_REPORT.value}")


if __name__ == "__main__":
    cli.run(main)
