"""The outcomes store: which inbound events this consumer group already settled, and how.

Kafka delivers at least once, so a message can come back after a crash or a rebalance; the
consumer records each message's outcome here before its offset is committed, and skips it
when it sees it again, across restarts: ``handled`` by event id (any copy is a duplicate),
``dead_lettered`` by position (``position_key``: the same delivery read again after a crash is
neither handled again nor dead-lettered twice, while a re-driven copy, produced again after
the cause is fixed, is processed).

One SQLite file (WAL), shareable by the members of a group on one host
(a partition moved to another member then still skips what the first one handled). Ids older
than the retention are purged; keep it longer than any redelivery can take.
"""

from __future__ import annotations

import sqlite3
import time

from .._threads import new_lock
from ..errors import SpoolError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS handled (
    consumer_group TEXT NOT NULL,
    event_id TEXT NOT NULL,
    handled_at REAL NOT NULL,
    outcome TEXT NOT NULL DEFAULT 'handled',
    PRIMARY KEY (consumer_group, event_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS handled_age ON handled(handled_at);
"""
HANDLED = "handled"
DEAD_LETTERED = "dead_lettered"


def position_key(topic: str, partition: int, offset: int) -> str:
    """The outcome key of a message with no readable event id: where it sits in the log."""
    return f"@{topic}/{partition}/{offset}"
PURGE_EVERY = 600.0  # seconds between retention purges


class HandledStore:
    """Persisted set of handled event ids per consumer group, with a retention window.

    >>> store = HandledStore(":memory:", "group")
    >>> store.add("e1"); store.seen("e1"), store.seen("e2")
    (True, False)
    """

    def __init__(self, path: str, group: str, *, retention_seconds: float = 86_400) -> None:
        self.path = path
        self.group = group
        self.retention_seconds = retention_seconds
        self._lock = new_lock()
        self._last_purge = 0.0
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                       timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(handled)")}
            if "outcome" not in columns:  # a state file of an earlier version: ids only
                self._db.execute("ALTER TABLE handled ADD COLUMN outcome TEXT NOT NULL "
                                 "DEFAULT 'handled'")
        except sqlite3.Error as exc:
            raise SpoolError(f"consumer state file {path} cannot be used ({exc}); make it "
                             "writable or set KAFKA_CONSUMER_STATE_PATH to a writable "
                             "location") from exc
        self.purge_expired()

    def seen(self, event_id: str) -> bool:
        return self.outcome(event_id) is not None

    def outcome(self, event_id: str) -> str | None:
        """``handled`` or ``dead_lettered`` when ``event_id`` was settled within the
        retention, else None."""
        with self._lock:
            row = self._db.execute(
                "SELECT handled_at, outcome FROM handled WHERE consumer_group = ? AND "
                "event_id = ?", (self.group, event_id)).fetchone()
        if row is None or row[0] < time.time() - self.retention_seconds:
            return None
        return str(row[1])

    def add(self, event_id: str, outcome: str = HANDLED) -> None:
        """Record ``event_id``'s outcome (committed when this returns)."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO handled (consumer_group, event_id, "
                             "handled_at, outcome) VALUES (?, ?, ?, ?)",
                             (self.group, event_id, time.time(), outcome))
        if time.monotonic() - self._last_purge > PURGE_EVERY:
            self.purge_expired()

    def purge_expired(self, now: float | None = None) -> int:
        """Forget ids handled before the retention window; returns how many."""
        self._last_purge = time.monotonic()
        cutoff = (now or time.time()) - self.retention_seconds
        with self._lock:
            return self._db.execute("DELETE FROM handled WHERE handled_at < ?",
                                    (cutoff,)).rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
