"""The handled-ids store: which inbound events this consumer group already acted on.

Kafka delivers at least once, so a message can come back after a crash or a rebalance; the
consumer records an event id here after its handler succeeds and skips it when it sees it
again, across restarts. One SQLite file (WAL), shareable by the members of a group on one host
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
    PRIMARY KEY (consumer_group, event_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS handled_age ON handled(handled_at);
"""
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
        except sqlite3.Error as exc:
            raise SpoolError(f"consumer state file {path} cannot be used ({exc}); make it "
                             "writable or set KAFKA_CONSUMER_STATE_PATH to a writable "
                             "location") from exc
        self.purge_expired()

    def seen(self, event_id: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT handled_at FROM handled WHERE consumer_group = ? AND event_id = ?",
                (self.group, event_id)).fetchone()
        return row is not None and row[0] >= time.time() - self.retention_seconds

    def add(self, event_id: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO handled VALUES (?, ?, ?)",
                             (self.group, event_id, time.time()))
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
