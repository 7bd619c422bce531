"""Copies a finished report into the README: the text between two markers and its pictures.

The README's result sections are never edited by hand: `scripts/update_readme.py` replaces the
block between `<!-- BEGIN <name> -->` and `<!-- END <name> -->` with the report's markdown
(headings demoted under the README's own) and copies the pictures it shows into a docs folder,
rewriting their links. The previous figures stay in git history.
"""

from __future__ import annotations

import os
import re
import shutil

_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def markers(name: str) -> tuple[str, str]:
    """The README lines that delimit the block `name`."""
    return f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"


def splice(readme: str, name: str, block: str) -> str:
    """`readme` with the text between the markers of `name` replaced by `block`.

    Raises:
      ValueError: the README lacks either marker (or has them in the wrong order).
    """
    begin, end = markers(name)
    start, stop = readme.find(begin), readme.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"README has no '{begin}' ... '{end}' block to replace")
    return readme[:start + len(begin)] + "\n" + block.strip("\n") + "\n" + readme[stop:]


def adopt_pictures(report: str, report_dir: str, readme_dir: str, pictures_dir: str) -> str:
    """Copies every picture `report` links (relative to `report_dir`) into `pictures_dir` and
    returns the report with links relative to `readme_dir`. A missing picture is an error."""
    os.makedirs(pictures_dir, exist_ok=True)

    def adopt(match: re.Match) -> str:
        title, link = match.groups()
        if re.match(r"^[a-z]+://", link):
            return match.group(0)
        source = os.path.join(report_dir, link)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"the report links {link!r}, but {source} does not exist")
        target = os.path.join(pictures_dir, os.path.basename(link))
        shutil.copyfile(source, target)
        return f"![{title}]({os.path.relpath(target, readme_dir)})"

    return _IMAGE.sub(adopt, report)


def demote_headings(markdown: str, levels: int) -> str:
    """Every markdown heading `levels` deeper (`# x` -> `### x` for 2), code blocks untouched."""
    out, in_code = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and re.match(r"^#{1,6} ", line):
            line = "#" * levels + line
        out.append(line)
    return "\n".join(out)


def update(readme_path: str, name: str, report_path: str, pictures_dir: str,
           heading_levels: int = 3) -> None:
    """Replaces the README block `name` with the report at `report_path` (see module doc)."""
    with open(report_path) as f:
        report = f.read()
    readme_dir = os.path.dirname(os.path.abspath(readme_path))
    report = adopt_pictures(report, os.path.dirname(os.path.abspath(report_path)), readme_dir,
                            pictures_dir)
    block = demote_headings(report, heading_levels)
    with open(readme_path) as f:
        readme = f.read()
    updated = splice(readme, name, block)
    with open(readme_path, "w") as f:
        f.write(updated)
