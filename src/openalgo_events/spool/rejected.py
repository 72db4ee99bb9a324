"""Events Kafka refused for good, set aside with their reasons: ``rejected.db`` (SQLite).

A small table: the relay adds a row when the broker (or librdkafka) refuses a record on its
own, and deletes it once a retry is delivered; ``openalgo-events spool retry`` only sets a
row's ``retry`` mark, which the relay picks up within a second. The journal is the store of
pending events; this file holds nothing else.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from typing import Any, NamedTuple

from ..errors import SpoolError
from . import format as fmt
from .directory import SpoolDirectory

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    user_id TEXT NOT NULL,
    created REAL NOT NULL,
    meta TEXT NOT NULL,
    value BLOB NOT NULL,
    reason TEXT NOT NULL,
    rejected REAL NOT NULL,
    retry REAL
);
CREATE INDEX IF NOT EXISTS rejected_by_event ON rejected(event_id);
"""


class RejectedEvent(NamedTuple):
    """An event set aside: listed by ``openalgo-events spool rejected``."""

    id: int
    event_id: str
    event_type: str
    user_id: str
    created: float  # unix time it was published
    rejected: float  # unix time it was set aside
    reason: str
    size: int  # bytes of its value


class RetryRecord(NamedTuple):
    """A rejected event marked for retry: what the relay needs to produce it again."""

    id: int
    meta: list[Any]
    value: bytes


class RejectedStore:
    """``rejected.db`` of a spool. ``readonly`` opens an existing file only (the CLI).

    Raises ``SpoolError`` (path and fix) when the file cannot be opened; its methods raise
    ``sqlite3.Error`` (the relay retries them: a full disk is a state, not a crash).
    """

    def __init__(self, directory: SpoolDirectory, *, readonly: bool = False) -> None:
        self.path = os.path.join(directory.path, fmt.REJECTED)
        self.db: sqlite3.Connection | None = None
        try:
            # Created 0600 first: SQLite gives its journal file the database file's mode.
            fd = directory.open(fmt.REJECTED, os.O_RDONLY if readonly else os.O_RDWR,
                                create=not readonly)
            os.close(fd)
        except FileNotFoundError:
            return  # nothing was ever rejected
        except OSError as exc:
            raise SpoolError(f"cannot open {self.path} ({exc.strerror}); give this user "
                             "access to the spool directory") from exc
        uri = f"file:{directory.proc_path(fmt.REJECTED)}?mode={'ro' if readonly else 'rw'}"
        try:
            self.db = sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None,
                                      check_same_thread=False)
            if not readonly:
                self.db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot open {self.path} ({exc}); move it aside (its rows are "
                             "events Kafka refused) and the relay makes a new one") from exc

    def add(self, meta: list[Any], value: bytes, reason: str) -> int:
        """Set one record aside; its row id."""
        assert self.db is not None
        cursor = self.db.execute(
            "INSERT INTO rejected (event_id, event_type, user_id, created, meta, value, reason, "
            "rejected) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (meta[fmt.EVENT_ID], meta[fmt.EVENT_TYPE], meta[fmt.USER_ID], meta[fmt.CREATED],
             _json(meta), value, reason, time.time()))
        return int(cursor.lastrowid or 0)

    def refused_again(self, row: int, reason: str) -> None:
        """A retried event Kafka refused again: it stays, with the new reason."""
        assert self.db is not None
        self.db.execute("UPDATE rejected SET reason = ?, rejected = ?, retry = NULL WHERE id = ?",
                        (reason, time.time(), row))

    def delivered(self, row: int) -> None:
        assert self.db is not None
        self.db.execute("DELETE FROM rejected WHERE id = ?", (row,))

    def marked_for_retry(self, limit: int = 100) -> list[RetryRecord]:
        if self.db is None:
            return []
        import json

        rows = self.db.execute("SELECT id, meta, value FROM rejected WHERE retry IS NOT NULL "
                               "ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [RetryRecord(row_id, json.loads(meta), bytes(value)) for row_id, meta, value in rows]

    def mark_for_retry(self, event_id: str) -> int:
        """Mark every rejected copy of ``event_id`` for sending again; how many."""
        if self.db is None:
            return 0
        return int(self.db.execute("UPDATE rejected SET retry = ? WHERE event_id = ?",
                                   (time.time(), event_id)).rowcount)

    def count(self) -> int:
        if self.db is None:
            return 0
        return int(self.db.execute("SELECT count(*) FROM rejected").fetchone()[0])

    def list(self, limit: int = 1000) -> list[RejectedEvent]:
        """Rejected events, oldest first."""
        if self.db is None:
            return []
        rows = self.db.execute(
            "SELECT id, event_id, event_type, user_id, created, rejected, reason, length(value) "
            "FROM rejected ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [RejectedEvent(*row) for row in rows]

    def close(self) -> None:
        if self.db is not None:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()
            self.db = None


def _json(meta: list[Any]) -> str:
    import json

    return json.dumps(meta, separators=(",", ":"))
