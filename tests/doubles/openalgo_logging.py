"""OpenAlgo's logging set-up, as it affects code running beside it (../shared/OPENALGO.md §8).

Root handlers replaced at import of the app (so, in an eventlet worker, after monkey-patching:
their locks are green), each with a filter that replaces every record argument by its ``str``:
a ``%d`` then fails at format time with a ``--- Logging error ---`` traceback.
"""

from __future__ import annotations

import logging
import sys


class StringifyArgs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(str(a) for a in record.args)
        return True


def install() -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(StringifyArgs())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
