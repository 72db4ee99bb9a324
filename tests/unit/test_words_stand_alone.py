"""What users read names things themselves, never a document they do not have ("the design",
its appendices): README, docs, every command's help and the package's docstrings."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from openalgo_events.cli import main

ROOT = Path(__file__).resolve().parents[2]
ABSENT = re.compile(r"\bthe (original )?design\b|\bdesign's\b|\bAppendix [A-Z]\b", re.IGNORECASE)


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


@pytest.mark.parametrize("path", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))],
                         ids=lambda p: p.name)
def test_readme_and_docs(path: Path) -> None:
    hits = [line for line in path.read_text().splitlines() if ABSENT.search(line)]
    assert not hits, f"{path.name} cites a document the reader lacks: {hits}"


@pytest.mark.parametrize("command", _commands(main), ids=" ".join)
def test_command_help(command: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert not ABSENT.search(result.output), result.output


def test_docstrings_of_the_package() -> None:
    hits = []
    for path in sorted((ROOT / "src" / "openalgo_events").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                 ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node) or ""
                if ABSENT.search(doc):
                    hits.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 1)}")
    assert not hits, f"docstrings citing a document the reader lacks: {hits}"
