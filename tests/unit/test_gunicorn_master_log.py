"""The gunicorn hook's master log handler: our records reach gunicorn's error log once, at its
level, even when that logger propagates to the root (a --log-config can make it)."""

from __future__ import annotations

import importlib
import logging
import sys

MODULE = "openalgo_events.integrations.gunicorn"


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_records_reach_gunicorns_error_log_once_at_its_level() -> None:
    # Imported here and forgotten after: a test that runs the config module as gunicorn does
    # (runpy) warns when it is in sys.modules already.
    try:
        handler_type = importlib.import_module(MODULE)._ToGunicornLog
    finally:
        sys.modules.pop(MODULE, None)
    error_log = logging.getLogger("test.gunicorn.error")
    error_log.setLevel(logging.INFO)
    error_log.propagate = True  # back to the root, where our handler is
    collected = Collect()
    error_log.addHandler(collected)
    root, ours = logging.getLogger(), logging.getLogger("openalgo_events.test")
    handler = handler_type(error_log)
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
