"""The durable local spool: every Kafka-bound event is on disk before ``publish`` returns.

Two layers. ``append`` (the caller's path) writes one framed record to an append-only journal
and queues it in memory: a copy into a mapped file, so a process crash (kill -9) loses nothing.
The relay calls ``mark_delivered`` to move queued records into SQLite (WAL mode) together with
the delivery reports collected meanwhile, in one transaction per batch, and journal segments
are deleted once what they hold is committed. A SQLite row is pending until the broker's
delivery report marks it delivered (a record reported before its commit is inserted delivered);
delivered rows stay as the replayable trail until the retention runs out.

``sync="NORMAL"`` survives a process crash but not a power loss (the kernel may not have
written the journal yet); ``"FULL"`` fsyncs every record and every commit and survives both,
at the cost of an fsync per event. ``":memory:"`` keeps the same logic without durability.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, NamedTuple

from ._journal import Journal, encode, read_segments, segment_paths
from ._threads import new_lock
from .catalog import Priority
from .envelope import Envelope, compact_json, headers_of, json_bytes
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
    extra_headers TEXT,
    delivered REAL
);
CREATE INDEX IF NOT EXISTS events_pending ON events(seq) WHERE delivered IS NULL;
CREATE INDEX IF NOT EXISTS events_by_user ON events(user_id, created);
CREATE TABLE IF NOT EXISTS writer_cursors (writer TEXT PRIMARY KEY, cursor TEXT NOT NULL);
"""
# A batch is a JSON array of rows (as journaled, each ending with its value's length) and the
# values laid end to end, cut out with substr at offsets summed by SQLite (values are not
# re-escaped, and no row is encoded twice); rows whose seq is in the JSON array ?3 are inserted
# delivered at ?4.
_INSERT_BATCH = (
    "INSERT OR IGNORE INTO events (seq, event_id, event_type, user_id, priority, created, topic,"
    " key, extra_headers, value, delivered) SELECT r ->> 0, r ->> 1, r ->> 2, r ->> 3, r ->> 4,"
    " r ->> 5, r ->> 6, CAST(r ->> 7 AS BLOB), r ->> 8, substr(?2, 1 + sum(r ->> 9) OVER (ORDER"
    " BY i) - (r ->> 9), r ->> 9), CASE WHEN r ->> 0 IN (SELECT value FROM json_each(?3)) THEN ?4"
    " END FROM (SELECT key AS i, value AS r FROM json_each(?1))")
REPLAY_HEADER = "openalgo_replay"
INGEST_BATCH = 16_000  # queued records a caller commits itself when the relay falls behind


class SpooledEvent(NamedTuple):
    """A record ready to produce."""

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
    """Pending events (durable before ``append`` returns) plus the trail of delivered ones.

    >>> spool = Spool(":memory:")
    >>> spool.append(Envelope("order_event", "alice", {}), "topic", Priority.CRITICAL)
    1
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
        self._lock = new_lock()  # guards the counters, the queue and the journal
        self._db_lock = new_lock()  # guards the SQLite connection
        # journaled, not yet committed: (seq, the row as JSON, the value)
        self._fresh: deque[tuple[int, bytes, bytes]] = deque()
        # writer cursors adopted with records of ``_fresh``, committed with them (see adopt)
        self._cursors_pending: dict[str, str] = {}
        self.committed_cursors: dict[str, str] = {}
        self._lock_file: IO[str] | None = None
        self._journal: Journal | None = None
        self._last_over_limit_log = 0.0
        self._shed = 0
        if path != ":memory:":
            self._lock_file = _claim(path)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if sync == 'FULL' else 'NORMAL'}")
            self._db.executescript(_SCHEMA)
            if path != ":memory:":
                self._journal = Journal(path, fsync=sync == "FULL")
                self._recover()
            self._depth, self._pending_bytes, last = self._db.execute(
                "SELECT count(*) FILTER (WHERE delivered IS NULL), coalesce(sum(length(value))"
                " FILTER (WHERE delivered IS NULL), 0), coalesce(max(seq), 0) FROM events"
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            self._release()
            raise SpoolError(_explain(path, exc)) from exc
        except OSError as exc:
            self._release()
            raise SpoolError(f"spool journal next to {path} cannot be written ({exc.strerror});"
                             " give this process write access to its directory, or set "
                             "KAFKA_SPOOL_PATH to a writable location") from exc
        self._next_seq = last + 1
        self.committed_seq = last  # every seq up to here is in SQLite
        if self._depth:
            log.warning("spool %s holds %s undelivered events from an earlier run; sending them",
                        path, self._depth)

    def _recover(self) -> None:
        """Move what an earlier run journaled but did not commit into SQLite."""
        assert self._journal is not None
        self._fresh.extend((meta[0], json_bytes([*meta[:9], len(value)]), value)
                           for meta, value in self._journal.recover())
        recovered = self.ingest()
        if recovered:
            log.warning("recovered %s journaled events into spool %s", recovered, self.path)
        Journal.remove(self._journal.earlier())  # their records are committed now

    # -- the publish path ------------------------------------------------------------------
    def append(self, envelope: Envelope, topic: str, priority: Priority) -> int | None:
        """Store one event as pending; its sequence number, or None when it was shed under the
        overflow policy."""
        seq = self._append(envelope.value, envelope.key, (), topic, priority,
                           envelope.event_id, envelope.event_type, envelope.user_id)
        if len(self._fresh) >= INGEST_BATCH:
            self.ingest()  # a caller outrunning the relay commits its own batch: memory stays flat
        return seq

    def _append(self, value: bytes, key: bytes, extra_headers: Sequence[tuple[str, bytes]],
                topic: str, priority: Priority, event_id: str, event_type: str,
                user_id: str) -> int | None:
        with self._lock:
            if self._pending_bytes + len(value) > self.max_bytes:
                if priority < Priority.HIGH:
                    self._shed += 1
                    self.stats.incr("shed", event_type=event_type)
                    log.warning("spool over its limit of %s bytes: shed %s event %s (priority %s)",
                                self.max_bytes, event_type, event_id, priority.name)
                    return None
                self._log_over_limit()
            seq: int = self._next_seq
            # The row SQLite will hold, but the value: journaled now, committed by ingest. Of the
            # headers only those beyond the CloudEvents ones, which the value implies, are kept.
            row = json_bytes([seq, event_id, event_type, user_id, int(priority), time.time(),
                              topic, key.decode(), _headers_text(extra_headers), len(value)])
            if self._journal is not None:
                try:
                    self._journal.write(encode(row, value))
                except (OSError, ValueError) as exc:
                    raise SpoolError(f"spool journal {self._journal.current} cannot be written "
                                     f"({exc}); free space or fix permissions") from exc
            self._next_seq = seq + 1
            self._fresh.append((seq, row, value))
            self._depth += 1
            self._pending_bytes += len(value)
        return seq

    def _log_over_limit(self) -> None:
        now = time.monotonic()
        if now - self._last_over_limit_log > 60:
            self._last_over_limit_log = now
            log.error("spool %s is over its limit (%s pending bytes > %s): HIGH and CRITICAL "
                      "events are still kept; LOW and MEDIUM ones are shed until Kafka catches up",
                      self.path, self._pending_bytes, self.max_bytes)

    # -- the relay ----------------------------------------------------------------------------
    def ingest(self) -> int:
        """Commit queued records to SQLite in one transaction; return how many.

        Drained and inserted under the database lock, so that once any ``ingest`` call returns,
        everything appended before it is in SQLite (a delivery mark cannot overtake its row).
        """
        with self._db_lock:
            if not self._cursors_pending:
                count, released = self._ingest("[]", None)
            else:  # the rows and the cursors of the writers they came from, together
                self._db.execute("BEGIN")
                try:
                    count, released = self._ingest("[]", None)
                    cursors = self._commit_cursors()
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                self._cursors_committed(cursors)
        self._tidy_journal(released)
        return count

    def adopt(self, records: Sequence[tuple[list[Any], bytes]],
              cursors: Mapping[str, str]) -> list[int | None]:
        """The relay's intake: records journaled by writer processes (``spooldir``), queued as
        pending under new sequence numbers, with the writers' cursors (writer id -> opaque
        text). Both are committed by the next commit (``mark_delivered``, ``ingest``) in one
        transaction, so that after a crash the relay resumes exactly where it committed; a
        record already reported delivered by then is inserted delivered (one write).

        Returns each record's sequence number, or None for one shed by the overflow policy.
        ``committed_cursors`` tells which cursors are committed.
        """
        seqs: list[int | None] = []
        with self._lock:
            for meta, value in records:
                if self._pending_bytes + len(value) > self.max_bytes:
                    priority = Priority(meta[4])
                    if priority < Priority.HIGH:
                        self._shed += 1
                        self.stats.incr("shed", event_type=meta[2])
                        log.warning("spool over its limit of %s bytes: shed %s event %s "
                                    "(priority %s)", self.max_bytes, meta[2], meta[1],
                                    priority.name)
                        seqs.append(None)
                        continue
                    self._log_over_limit()
                seq: int = self._next_seq
                self._next_seq = seq + 1
                self._fresh.append((seq, json_bytes([seq, *meta[1:9], len(value)]), value))
                self._depth += 1
                self._pending_bytes += len(value)
                seqs.append(seq)
            self._cursors_pending.update(cursors)
        return seqs

    def _commit_cursors(self) -> dict[str, str]:
        """Write the queued cursors (inside the caller's transaction); those written."""
        with self._lock:
            cursors = dict(self._cursors_pending)
        if cursors:
            self._db.executemany("INSERT OR REPLACE INTO writer_cursors VALUES (?, ?)",
                                 list(cursors.items()))
        return cursors

    def _cursors_committed(self, cursors: dict[str, str]) -> None:
        with self._lock:
            for name, cursor in cursors.items():
                if self._cursors_pending.get(name) == cursor:
                    del self._cursors_pending[name]
            self.committed_cursors.update(cursors)

    def cursors(self) -> dict[str, str]:
        """The writers' committed cursors (see ``adopt``)."""
        with self._db_lock:
            found = dict(self._db.execute("SELECT writer, cursor FROM writer_cursors"))
        with self._lock:
            self.committed_cursors = dict(found)
        return found

    def forget_writer(self, writer: str) -> None:
        """Drop the cursor of a writer whose journal is drained and deleted."""
        with self._db_lock:
            self._db.execute("DELETE FROM writer_cursors WHERE writer = ?", (writer,))
        with self._lock:
            self.committed_cursors.pop(writer, None)

    def oldest_pending_created(self) -> float | None:
        """When the oldest pending event was created (unix time), by the pending index."""
        with self._db_lock:
            row = self._db.execute("SELECT created FROM events WHERE delivered IS NULL "
                                   "ORDER BY seq LIMIT 1").fetchone()
        with self._lock:
            fresh = json.loads(self._fresh[0][1])[5] if self._fresh else None
        found = [c for c in (row[0] if row else None, fresh) if c is not None]
        return min(found) if found else None

    def min_pending_seq(self) -> int | None:
        """The oldest pending event's sequence number (None when nothing is pending)."""
        with self._db_lock:
            row = self._db.execute(
                "SELECT min(seq) FROM events WHERE delivered IS NULL").fetchone()
        with self._lock:
            fresh = self._fresh[0][0] if self._fresh else None
        found = [s for s in (row[0] if row else None, fresh) if s is not None]
        return min(found) if found else None

    def _tidy_journal(self, released: list[str]) -> None:
        """After a commit: delete the segments it emptied, and have the next one ready."""
        if self._journal is not None:
            Journal.remove(released)  # every record of these segments is committed now
            self._journal.prepare()

    def _ingest(self, delivered: str, now: float | None) -> tuple[int, list[str]]:
        """Insert the queued records (under the database lock); those whose seq is in the JSON
        array ``delivered`` are inserted delivered at ``now``. Returns how many, and the journal
        segments that may go once this is committed."""
        with self._lock:
            batch = list(self._fresh)
            self._fresh.clear()
            released = self._journal.take_retired() if self._journal else []
        if batch:
            try:
                # One statement per batch: sqlite3 releases the GIL at every step, and a step
                # per row would hand the GIL to the caller row by row.
                self._db.execute(_INSERT_BATCH, (
                    b"[" + b",".join([row for _, row, _ in batch]) + b"]",
                    b"".join([value for _, _, value in batch]), delivered, now))
            except BaseException:
                with self._lock:  # still journaled: queued again for the next attempt
                    self._fresh.extendleft(reversed(batch))
                    if self._journal is not None:
                        self._journal.give_back(released)
                raise
            self.committed_seq = batch[-1][0]
        return len(batch), released

    def pending(self, after_seq: int = 0, limit: int = 1000) -> list[SpooledEvent]:
        """Pending events after ``after_seq``, oldest first."""
        self.ingest()
        with self._db_lock:
            rows = self._db.execute(
                "SELECT seq, topic, key, value, extra_headers, event_id, created FROM events "
                "WHERE delivered IS NULL AND seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [
            SpooledEvent(seq, topic, key, value, record_headers(value, extra), event_id, created)
            for seq, topic, key, value, extra, event_id, created in rows
        ]

    def mark_delivered(self, seqs: Iterable[int]) -> Counter[str]:
        """Commit queued records, then mark ``seqs`` delivered, in one transaction; returns how
        many of each event type were still pending (a resent duplicate counts nothing).

        A queued record already reported delivered is inserted delivered: one write of its row,
        not an insert and then an update.
        """
        seqs = list(seqs)
        if not seqs and not self._fresh and not self._cursors_pending:
            return Counter()
        batch, now = compact_json(seqs), time.time()
        marked = "seq IN (SELECT value FROM json_each(?1))"
        where = f"{marked} AND (delivered IS NULL OR delivered = ?2)"  # pending until now
        with self._db_lock:  # a few statements per batch, not a step per row (see _ingest)
            self._db.execute("BEGIN")
            try:
                _, released = self._ingest(batch, now)
                rows = self._db.execute(
                    "SELECT event_type, count(*), sum(length(value)), count(*) FILTER (WHERE "
                    f"delivered IS NULL) FROM events WHERE {where} GROUP BY event_type",
                    (batch, now)).fetchall()
                if self.path == ":memory:":  # no durability, so no trail to keep for replay
                    self._db.execute(f"DELETE FROM events WHERE {where}", (batch, now))
                elif any(unmarked for *_, unmarked in rows):
                    self._db.execute(f"UPDATE events SET delivered = ?2 WHERE {marked} AND "
                                     "delivered IS NULL", (batch, now))
                cursors = self._commit_cursors()
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._cursors_committed(cursors)
        self._tidy_journal(released)
        with self._lock:
            self._depth -= sum(count for _, count, _, _ in rows)
            self._pending_bytes -= sum(size for _, _, size, _ in rows)
        return Counter({event_type: count for event_type, count, _, _ in rows})

    def purge_expired(self, now: float | None = None) -> int:
        """Delete delivered rows older than the retention, in small batches."""
        cutoff = (now or time.time()) - self.retention_seconds
        removed = 0
        while True:
            with self._db_lock:
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
        with self._db_lock:
            rows = self._db.execute(
                "SELECT topic, key, value, extra_headers, event_id, event_type, user_id, priority "
                f"FROM events WHERE {' AND '.join(where)} ORDER BY seq", params).fetchall()
        if not dry_run:
            for old_topic, key, value, extra, event_id, event_type, user, priority in rows:
                marked = [*stored_headers(extra), (REPLAY_HEADER, b"1")]
                self._append(value, key, marked, topic or old_topic,
                             Priority(priority), event_id, event_type, user)
        return len(rows)

    # -- health ---------------------------------------------------------------------------------
    def status(self) -> SpoolStatus:
        with self._db_lock:
            oldest = self._db.execute(
                "SELECT created FROM events WHERE delivered IS NULL ORDER BY seq LIMIT 1"
            ).fetchone()
            delivered = self._db.execute(
                "SELECT count(*) FROM events WHERE delivered IS NOT NULL").fetchone()[0]
        with self._lock:
            if oldest is None and self._fresh:
                oldest = (json.loads(self._fresh[0][1])[5],)  # the row's created
            return SpoolStatus(self.path, self._depth, self._pending_bytes, self.max_bytes,
                               time.time() - oldest[0] if oldest else None, delivered, self._shed)

    @property
    def queued(self) -> int:
        """Records appended but not yet committed to SQLite."""
        return len(self._fresh)

    @property
    def depth(self) -> int:
        return int(self._depth)

    @property
    def last_seq(self) -> int:
        """The newest appended event's sequence number."""
        return int(self._next_seq) - 1

    def close(self) -> None:
        with self._db_lock:
            # not ingest(): no next segment is prepared, all go below; the adopted writers'
            # cursors go with their records
            self._db.execute("BEGIN")
            self._ingest("[]", None)
            self._commit_cursors()
            self._db.execute("COMMIT")
            self._db.close()
        if self._journal is not None:
            self._journal.close()
            Journal.remove(self._journal.segments())  # all committed by the ingest above
        self._release()

    def _release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


def _headers_text(headers: Sequence[tuple[str, bytes]]) -> str | None:
    return compact_json([(k, v.decode()) for k, v in headers]) if headers else None


def stored_headers(text: str | None) -> list[tuple[str, bytes]]:
    """The extra headers of a stored row (the CloudEvents ones come from ``headers_of``)."""
    return [(k, v.encode()) for k, v in json.loads(text)] if text else []


def record_headers(value: bytes, extra: str | None) -> list[tuple[str, bytes]]:
    """Every header of a stored row: the CloudEvents ones its value implies, then its own."""
    return [*headers_of(value), *stored_headers(extra)]


def uncommitted(path: str, committed_seq: int) -> list[tuple[int, float, int]]:
    """(seq, created, size) of events journaled next to spool ``path`` but not yet committed to
    its SQLite file, oldest first: the last few milliseconds of a running relay, what a crashed
    one left for its next start, and what app processes journaled that no relay has read yet
    (seq 0 for those). Read-only."""
    found = [(meta[0], meta[5], len(value))
             for meta, value in read_segments(segment_paths(path)) if meta[0] > committed_seq]
    return sorted(found + _unread_by_relay(path), key=lambda record: record[1])


def _unread_by_relay(path: str) -> list[tuple[int, float, int]]:
    """(0, created, size) of the records app processes journaled (``spooldir``) past the
    relay's committed cursors: accepted, not yet in SQLite (the relay is behind or down)."""
    from . import spooldir

    cursors: dict[str, tuple[int, int]] = {}
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            for writer, text in db.execute("SELECT writer, cursor FROM writer_cursors"):
                segment, offset, _ = json.loads(text)
                cursors[writer] = (segment, offset)
    except sqlite3.Error:
        pass  # no trail yet, or one from before the relay process: nothing committed
    found: list[tuple[int, float, int]] = []
    try:
        writers = [n for n in os.listdir(spooldir.writers_dir(path)) if not n.startswith(".")]
    except OSError:
        return found
    for writer in writers:
        segment, offset = cursors.get(writer, (0, 0))
        for each in spooldir.segments(os.path.join(spooldir.writers_dir(path), writer)):
            number = spooldir.segment_number(each)
            if number < segment:
                continue
            try:
                with open(each, "rb") as handle:
                    data = handle.read()
            except FileNotFoundError:
                continue
            start = offset if number == segment else 0
            for _, _, payload in spooldir.frames_from(data, start):
                meta, _, value = payload.partition(b"\n")
                found.append((0, json.loads(meta)[5], len(value)))
    return found


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
