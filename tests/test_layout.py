"""The layout's rules, read from every module's imports (issue 32): `precompute` reads the torch-free core
(`app.core`) and nothing else of `app`; the core reads nothing of the web, of `precompute` or of torch."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: What the core may never import: the web's modules are everything of `app` outside `app.core`.
HEAVY = ("torch", "torchvision", "precompute")


def imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (also inside functions), absolute, with its line; ``from app import x``
    names ``app.x``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names] if node.module in ("app", "app.core") else []
            found += [(node.lineno, name) for name in names or [node.module]]
    return found


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", _modules("precompute"), ids=lambda path: str(path.relative_to(ROOT)))
def test_precompute_reads_the_core_and_nothing_else_of_app(path: Path) -> None:
    wrong = [f"line {line}: {name}" for line, name in imports(path) if _within(name, "app") and not _within(name, "app.core")]
    assert not wrong, f"{path.relative_to(ROOT)} imports the web ({wrong}): move what it needs into app.core"


@pytest.mark.parametrize("path", _modules("app/core"), ids=lambda path: str(path.relative_to(ROOT)))
def test_the_core_reads_neither_the_web_nor_torch(path: Path) -> None:
    wrong = [f"line {line}: {name}" for line, name in imports(path)
             if (_within(name, "app") and not _within(name, "app.core")) or any(_within(name, heavy) for heavy in HEAVY)]
    # The command's root reaches the server by name (uvicorn's "app.main:create_app"), never by import.
    assert not wrong, f"{path.relative_to(ROOT)} imports {wrong}: the core is what both sides share"


def test_the_rules_see_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "stage.py"
    module.write_text("def run():\n    from app import browse\n    from app.core.zoo import LayerSpec\n", encoding="utf-8")
    assert imports(module) == [(2, "app.browse"), (3, "app.core.zoo")]
