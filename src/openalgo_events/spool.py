"""The durable local spool: every Kafka-bound event is on disk before ``publish`` returns.

One SQLite file in WAL mode. A row is pending until the broker's delivery report marks it
delivered; delivered rows stay as the replayable trail until the retention runs out. With
``synchronous=NORMAL`` a commit survives a process crash (kill -9) but not a power loss;
``FULL`` survives both at the cost of an fsync per event. ``:memory:`` keeps the same logic
without durability.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO

from ._threads import new_lock
from .catalog import Priority
from .envelope import Envelope
from .errors import SpoolError
from .stats import Stats

log = logging.getLogger("openalgo_events.spool")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    user_id TEXT NOT NULL,
    priority INTEGER NOT NULL,
    created REAL NOT NULL,
    topic TEXT NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    headers TEXT NOT NULL,
    delivered REAL
);
CREATE INDEX IF NOT EXISTS events_pending ON events(seq) WHERE delivered IS NULL;
CREATE INDEX IF NOT EXISTS events_by_user ON events(user_id, created);
"""
REPLAY_HEADER = "openalgo_replay"


@dataclass(frozen=True)
class SpooledEvent:
    """A row ready to produce."""

    seq: int
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    event_id: str
    created: float


@dataclass(frozen=True)
class SpoolStatus:
    path: str
    depth: int
    pending_bytes: int
    max_bytes: int
    oldest_pending_age: float | None
    delivered: int
    shed: int

    @property
    def over_limit(self) -> bool:
        return self.pending_bytes > self.max_bytes


class Spool:
    """A SQLite-backed queue of pending events plus the trail of delivered ones.

    >>> spool = Spool(":memory:")
    >>> spool.append(Envelope("order_event", "alice", {}), "topic", Priority.CRITICAL)
    True
    >>> spool.status().depth
    1
    """

    def __init__(
        self,
        path: str = ":memory:",
        *,
        max_bytes: int = 512 * 1024 * 1024,
        sync: str = "NORMAL",
        retention_hours: float = 168,
        stats: Stats | None = None,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.retention_seconds = retention_hours * 3600
        self.stats = stats or Stats()
        self._lock = new_lock()
        self._lock_file: IO[str] | None = None
        self._last_over_limit_log = 0.0
        self._shed = 0
        if path != ":memory:":
            self._lock_file = _claim(path)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if sync == 'FULL' else 'NORMAL'}")
            self._db.executescript(_SCHEMA)
            self._depth, self._pending_bytes = self._db.execute(
                "SELECT count(*), coalesce(sum(length(value)), 0) FROM events "
                "WHERE delivered IS NULL"
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            self._release()
            raise SpoolError(_explain(path, exc)) from exc
        if self._depth:
            log.warning("spool %s holds %d undelivered events from an earlier run; sending them",
                        path, self._depth)

    # -- the publish path ------------------------------------------------------------------
    def append(self, envelope: Envelope, topic: str, priority: Priority,
               extra_headers: Iterable[tuple[str, bytes]] = ()) -> bool:
        """Store one event as pending. False when it was shed under the overflow policy."""
        value = envelope.value
        headers = json.dumps([(k, v.decode()) for k, v in (*envelope.headers(), *extra_headers)])
        with self._lock:
            if self._pending_bytes + len(value) > self.max_bytes:
                if priority < Priority.HIGH:
                    self._shed += 1
                    self.stats.incr("shed", event_type=envelope.event_type)
                    log.warning("spool over its limit of %d bytes: shed %s event %s (priority %s)",
                                self.max_bytes, envelope.event_type, envelope.event_id,
                                priority.name)
                    return False
                self._log_over_limit()
            try:
                self._db.execute(
                    "INSERT INTO events (event_id, event_type, user_id, priority, created, topic,"
                    " key, value, headers) VALUES (?,?,?,?,?,?,?,?,?)",
                    (envelope.event_id, envelope.event_type, envelope.user_id, int(priority),
                     time.time(), topic, envelope.key, value, headers),
                )
            except sqlite3.Error as exc:
                raise SpoolError(_explain(self.path, exc)) from exc
            self._depth += 1
            self._pending_bytes += len(value)
        return True

    def _log_over_limit(self) -> None:
        now = time.monotonic()
        if now - self._last_over_limit_log > 60:
            self._last_over_limit_log = now
            log.error("spool %s is over its limit (%d pending bytes > %d): HIGH and CRITICAL "
                      "events are still kept; LOW and MEDIUM ones are shed until Kafka catches up",
                      self.path, self._pending_bytes, self.max_bytes)

    # -- the relay ----------------------------------------------------------------------------
    def pending(self, after_seq: int = 0, limit: int = 1000) -> list[SpooledEvent]:
        """Pending events after ``after_seq``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, topic, key, value, headers, event_id, created FROM events "
                "WHERE delivered IS NULL AND seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [
            SpooledEvent(seq, topic, key, value,
                         [(k, v.encode()) for k, v in json.loads(headers)], event_id, created)
            for seq, topic, key, value, headers, event_id, created in rows
        ]

    def mark_delivered(self, seqs: Iterable[int]) -> Counter[str]:
        """Mark rows delivered; returns how many of each event type were still pending
        (a resent duplicate counts nothing)."""
        seqs = list(seqs)
        delivered: Counter[str] = Counter()
        now = time.time()
        for start in range(0, len(seqs), 500):
            chunk = seqs[start:start + 500]
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows = self._db.execute(
                    f"UPDATE events SET delivered = ? WHERE seq IN ({marks}) "
                    "AND delivered IS NULL RETURNING length(value), event_type",
                    (now, *chunk),
                ).fetchall()
                self._depth -= len(rows)
                self._pending_bytes -= sum(size for size, _ in rows)
            delivered.update(event_type for _, event_type in rows)
        return delivered

    def purge_expired(self, now: float | None = None) -> int:
        """Delete delivered rows older than the retention, in small batches."""
        cutoff = (now or time.time()) - self.retention_seconds
        removed = 0
        while True:
            with self._lock:
                count = self._db.execute(
                    "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE created < ? "
                    "AND delivered IS NOT NULL ORDER BY seq LIMIT 2000)", (cutoff,)
                ).rowcount
            removed += count
            if count < 2000:
                return removed

    # -- the trail ------------------------------------------------------------------------------
    def replay(self, *, user_id: str | None = None, since: float | None = None,
               until: float | None = None, topic: str | None = None,
               event_types: Iterable[str] | None = None, dry_run: bool = False) -> int:
        """Queue delivered events of a user (or everyone) in a time window for sending again.

        The copies keep their event id (so consumers can tell it is the same event) and carry
        an ``openalgo_replay`` header. Returns how many events match.
        """
        where = ["delivered IS NOT NULL", "created >= ?", "created <= ?"]
        params: list[object] = [since or 0.0, until or time.time()]
        if user_id is not None:
            where.append("user_id = ?")
            params.append(user_id)
        types = list(event_types or ())
        if types:
            where.append(f"event_type IN ({','.join('?' * len(types))})")
            params.extend(types)
        cond = " AND ".join(where)
        with self._lock:
            if dry_run:
                count: int = self._db.execute(
                    f"SELECT count(*) FROM events WHERE {cond}", params).fetchone()[0]
                return count
            now = time.time()
            rows = self._db.execute(
                f"SELECT seq, topic, headers, length(value) FROM events WHERE {cond} ORDER BY seq",
                params,
            ).fetchall()
            for seq, old_topic, headers, size in rows:
                marked = json.dumps([*json.loads(headers), [REPLAY_HEADER, "1"]])
                self._db.execute(
                    "INSERT INTO events (event_id, event_type, user_id, priority, created, topic,"
                    " key, value, headers) SELECT event_id, event_type, user_id, priority, ?, ?,"
                    " key, value, ? FROM events WHERE seq = ?",
                    (now, topic or old_topic, marked, seq),
                )
                self._depth += 1
                self._pending_bytes += size
        return len(rows)

    def events(self, *, user_id: str | None = None, since: float | None = None,
               until: float | None = None) -> list[tuple[float, bool, bytes]]:
        """(created, delivered?, value) of stored events, oldest first: for inspection."""
        where, params = ["created >= ?", "created <= ?"], [since or 0.0, until or time.time()]
        if user_id is not None:
            where.append("user_id = ?")
            params.append(user_id)
        with self._lock:
            rows = self._db.execute(
                f"SELECT created, delivered IS NOT NULL, value FROM events "
                f"WHERE {' AND '.join(where)} ORDER BY seq", params).fetchall()
        return [(created, bool(done), value) for created, done, value in rows]

    # -- health ---------------------------------------------------------------------------------
    def status(self) -> SpoolStatus:
        with self._lock:
            oldest = self._db.execute(
                "SELECT created FROM events WHERE delivered IS NULL ORDER BY seq LIMIT 1"
            ).fetchone()
            delivered = self._db.execute(
                "SELECT count(*) FROM events WHERE delivered IS NOT NULL").fetchone()[0]
            return SpoolStatus(self.path, self._depth, self._pending_bytes, self.max_bytes,
                               time.time() - oldest[0] if oldest else None, delivered, self._shed)

    @property
    def depth(self) -> int:
        return self._depth

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self._release()

    def _release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


def _claim(path: str) -> IO[str]:
    """Take the spool's lock file: two processes relaying one spool would double-send."""
    import fcntl

    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise SpoolError(f"spool directory {directory} does not exist; create it or set "
                         "KAFKA_SPOOL_PATH to a file in an existing, writable directory")
    try:
        handle = open(path + ".lock", "a+")  # noqa: SIM115 (held open for the spool's life)
    except OSError as exc:
        raise SpoolError(f"cannot create {path}.lock ({exc.strerror}); make {directory} writable "
                         "by this process or set KAFKA_SPOOL_PATH to a writable location") from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise SpoolError(f"spool {path} is in use by another process; give each process its own "
                         "KAFKA_SPOOL_PATH (one spool per publishing process)") from exc
    return handle


def _explain(path: str, exc: sqlite3.Error) -> str:
    text = str(exc)
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return (f"spool file {path} is corrupt ({text}). Stop the app, move it aside "
                f"(mv {path} {path}.corrupt; its undelivered events can be salvaged with "
                f"'sqlite3 {path}.corrupt .recover'), then start again with an empty spool")
    if "readonly" in text or "unable to open" in text or "disk I/O" in text:
        return (f"spool file {path} cannot be written ({text}); give this process write access "
                "to it and its directory, or set KAFKA_SPOOL_PATH to a writable location")
    if "full" in text:
        return f"spool file {path}: the disk is full ({text}); free space on its volume"
    return f"spool file {path}: {text}"
