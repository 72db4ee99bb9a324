"""The gunicorn hook's master log handler: our records reach gunicorn's error log once, at its
level, even when that logger propagates to the root (a --log-config can make it)."""

from __future__ import annotations

import logging

from openalgo_events.integrations.gunicorn import _ToGunicornLog


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_records_reach_gunicorns_error_log_once_at_its_level() -> None:
    error_log = logging.getLogger("test.gunicorn.error")
    error_log.setLevel(logging.INFO)
    error_log.propagate = True  # back to the root, where our handler is
    collected = Collect()
    error_log.addHandler(collected)
    root, ours = logging.getLogger(), logging.getLogger("openalgo_events.test")
    handler = _ToGunicornLog(error_log)
    root.addHandler(handler)
    level = ours.level
    ours.setLevel(logging.DEBUG)
    try:
        ours.info("relay started")
        ours.debug("below gunicorn's level")
        logging.getLogger("someone.else").warning("not ours")
    finally:
        root.removeHandler(handler)
        error_log.removeHandler(collected)
        ours.setLevel(level)
    assert [r.getMessage() for r in collected.records] == ["relay started"]
