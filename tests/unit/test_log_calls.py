"""Every log call of the package survives a host whose logging filter stringifies arguments.

OpenAlgo's handlers replace each ``record.args`` item by its ``str()`` (OPENALGO.md section 8):
a ``%d`` or ``%f`` placeholder then fails at format time and prints a ``--- Logging error ---``
traceback instead of the line. Only ``%s`` (and ``%%``) may appear in a log call's message.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import openalgo_events

_LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}
_PLACEHOLDER = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[a-zA-Z%]")


def _format_strings(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in _LOG_METHODS and node.args):
            continue
        first = node.args[1] if node.func.attr == "log" and len(node.args) > 1 else node.args[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            found.append((node.lineno, first.value))
    return found


def test_log_messages_use_only_percent_s() -> None:
    """No log call in the package uses a placeholder other than %s."""
    root = Path(openalgo_events.__file__).parent
    offenders = []
    checked = 0
    for path in sorted(root.rglob("*.py")):
        for line, text in _format_strings(ast.parse(path.read_text(), str(path))):
            checked += 1
            bad = [p for p in _PLACEHOLDER.findall(text) if p not in ("%s", "%%")]
            if bad:
                offenders.append(f"{path.relative_to(root)}:{line}: {bad} in {text!r}")
    assert checked > 50, "the scan found too few log calls: is it looking at the package?"
    assert not offenders, "log calls must use only %s:\n" + "\n".join(offenders)


def test_the_scan_catches_a_numeric_placeholder() -> None:
    """The checker itself flags %d, %.1f and %r (so the test above can fail)."""
    tree = ast.parse('log.info("a %d b %.1f c %r d %s e %%", 1, 2, 3, 4)')
    [(_, text)] = _format_strings(tree)
    assert [p for p in _PLACEHOLDER.findall(text) if p not in ("%s", "%%")] == ["%d", "%.1f", "%r"]
