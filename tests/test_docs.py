"""The docs say what the code does: every setting documented, every cited test exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from cachefs.config import FIELDS

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for field in FIELDS:
        flag = "--" + field.name.replace("_", "-")
        assert f"| `{field.name}` | `{flag}` |" in readme, field.name


def test_readme_starts_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text().split("---")[0]
    commands = re.findall(r"^\./scripts/\S+.*$", head, re.MULTILINE)
    assert len(commands) == 2
    assert "cachefs mount" in commands[0] and commands[1].startswith("./scripts/test.sh")


def test_tests_cited_by_the_docs_exist() -> None:
    defined: set[str] = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        tree = ast.parse(path.read_text())
        defined |= {f"{path.name}::{n.name}" for n in ast.walk(tree)
                    if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    for doc in (ROOT / "docs").glob("*.md"):
        for cited in re.findall(r"(test_\w+\.py::test_\w+)", doc.read_text()):
            assert cited in defined, f"{doc.name} cites {cited}, which does not exist"
