"""The documentation (issue 32): the CLI and URL references are what the code generates today, every relative
link of the README and docs/ names a file (and a heading) that exists, and the README stays a front page."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]+\]\(([^)#\s]+)?(?:#([^)\s]+))?\)")


def _generated() -> dict[Path, str]:
    """What `scripts/docs.py` writes, made in a fresh process (the command's plugins register once per process)."""
    code = ("import json, sys; sys.path.insert(0, 'scripts'); import docs; "
            "print(json.dumps({str(path): text for path, text in docs.generated().items()}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    return {Path(path): text for path, text in json.loads(result.stdout).items()}


def test_the_cli_and_url_references_are_not_stale() -> None:
    for path, text in _generated().items():
        assert path.read_text(encoding="utf-8") == text, f"{path.relative_to(ROOT)} is stale: run python scripts/docs.py"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_names_a_file_and_heading_that_exist(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    for target, anchor in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        linked = (page.parent / target) if target else page
        assert linked.exists(), f"{page.relative_to(ROOT)} links {target}, which does not exist"
        if anchor and linked.suffix == ".md":
            headings = {_anchor(line.lstrip("#")) for line in linked.read_text(encoding="utf-8").splitlines()
                        if line.startswith("#")}
            assert anchor in headings, f"{page.relative_to(ROOT)} links {target}#{anchor}: no such heading"


def test_the_readme_is_a_front_page_with_the_two_commands_first() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 120
    first_section = next(index for index, line in enumerate(lines) if line.startswith("## "))
    assert lines[first_section] == "## The two commands"
    block = "\n".join(lines[first_section:first_section + 10])
    assert "scripts/main" in block and "scripts/test" in block
