"""Points in time for ``--since`` / ``--until``: ISO 8601 or relative to now (``2h``)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import click

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(text: str, now: float | None = None) -> float:
    """Unix seconds for ``text``: ``now``, ``90s``/``15m``/``2h``/``7d``/``1w`` ago, or ISO 8601.

    An ISO time without an offset is read as local time; ``Z`` or ``+05:30`` are honoured.

    >>> parse_when("2h", now=10_000.0)
    2800.0
    >>> parse_when("2026-01-29T10:30:00Z")
    1769682600.0
    """
    now = time.time() if now is None else now
    cleaned = text.strip().lower()
    if cleaned == "now":
        return now
    match = _RELATIVE.match(cleaned)
    if match:
        return now - float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time; use ISO 8601 (2026-01-29T10:30:00Z, 2026-01-29 10:30) "
            "or a duration ago such as 90s, 15m, 2h, 7d, 1w"
        ) from None
    return moment.timestamp()  # a naive datetime is taken as local time


def format_when(seconds: float) -> str:
    """Unix seconds as a UTC RFC 3339 string with milliseconds, the way events carry time."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class When(click.ParamType[float]):
    """A click option type for ``parse_when`` (bad input is a usage error, not a traceback)."""

    name = "TIME"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_when(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
