"""DESIGN.md's import arrows, read from the code (function-level imports too: a lazy import is still a dependency):
nn/ uses only torch, models/ use nn/ and the config, generation/ and data/ use no training/, and only the CLI
uses serve/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "neurallayers"


def internal_imports(path: Path) -> set[str]:
    """The neurallayers modules `path` imports anywhere in it (relative imports resolved)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*parts[:-node.level], *([base] if base else [])])
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {name for name in found if name.split(".")[0] == "neurallayers"}


def files(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


def allowed(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize(("folder", "may_use"), [
    ("nn", ("neurallayers.nn",)),
    ("models", ("neurallayers.nn", "neurallayers.models", "neurallayers.config", "neurallayers.checks")),
    # generation/ and data/ use the centre, never training, interop, serving or the CLI (the bf16 warning and the
    # cache folder they need live in nn/cpu.py and files.py)
    ("generation", ("neurallayers.generation", "neurallayers.data", "neurallayers.models", "neurallayers.nn",
                    "neurallayers.config", "neurallayers.checks", "neurallayers.files")),
    ("data", ("neurallayers.data", "neurallayers.checks", "neurallayers.files")),
])
def test_the_centre_imports_nothing_from_the_edges(folder, may_use):
    bad = {f"{path.relative_to(PACKAGE)}: {name}" for path in files(folder) for name in internal_imports(path)
           if not allowed(name, may_use)}
    assert not bad, sorted(bad)


def test_only_the_cli_uses_the_server():
    users = {str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py") if path.parent.name != "serve"
             and any(allowed(n, ("neurallayers.serve",)) for n in internal_imports(path))}
    assert all(u.startswith("cli/") or u == "__main__.py" for u in users), sorted(users)
