"""The durable local spool: every Kafka-bound event is on disk before ``publish`` returns.

Two layers. ``append`` (the caller's path) writes one framed record to an append-only journal
and queues it in memory: a copy into a mapped file, so a process crash (kill -9) loses nothing.
The relay calls ``mark_delivered`` to move queued records into SQLite (WAL mode) together with
the delivery reports collected meanwhile, in one transaction per batch, and journal segments
are deleted once what they hold is committed. A SQLite row is pending until the broker's
delivery report marks it delivered (a record reported before its commit is inserted delivered);
delivered rows stay as the replayable trail until the retention runs out.

Storage faults (docs/operations.md, "Storage faults"): a journal that cannot be written raises
``SpoolError`` from ``append`` (nothing was stored); a spool file deleted or replaced under the
running process is restored at its path from the open database (SQLite's backup API) before
any journal segment is deleted; the delivered trail is bounded by age and by size.

``sync="NORMAL"`` survives a process crash but not a power loss (the kernel may not have
written the journal yet); ``"FULL"`` fsyncs every record and every commit and survives both,
at the cost of an fsync per event. ``":memory:"`` keeps the same logic without durability.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from ._journal import Journal, _same_file, encode, read_segments, segment_paths
from ._threads import new_lock
from .catalog import Priority
from .envelope import Envelope, compact_json, headers_of, json_bytes
from .errors import SpoolError
from .stats import Stats

if TYPE_CHECKING:
    from .config import Settings

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
CREATE TABLE IF NOT EXISTS rejected (
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
    reason TEXT NOT NULL,
    rejected REAL NOT NULL,
    retry REAL
);
CREATE INDEX IF NOT EXISTS rejected_by_event ON rejected(event_id);
CREATE TABLE IF NOT EXISTS writer_cursors (writer TEXT PRIMARY KEY, cursor TEXT NOT NULL);
"""
# Events Kafka refused for good (too large, invalid) or the relay could not read: moved out of
# ``events`` into ``rejected`` (a table added by CREATE IF NOT EXISTS, so a spool file of an
# earlier version gains it when opened), so that they never block the events after them and
# every query on ``events`` stays as it was. ``openalgo-events spool retry`` sets ``retry`` on a
# row (the app holds the spool, the command only writes that column); the relay then moves it
# back as a new pending event (``requeue_retries``).
_COLUMNS = "seq, event_id, event_type, user_id, priority, created, topic, key, value, extra_headers"
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


class RejectedEvent(NamedTuple):
    """An event set aside by ``Spool.reject``: listed by ``openalgo-events spool rejected``."""

    seq: int
    event_id: str
    event_type: str
    user_id: str
    created: float  # unix time it was published
    rejected: float  # unix time it was set aside
    reason: str
    size: int  # bytes of its value


@dataclass(frozen=True)
class SpoolStatus:
    path: str
    depth: int
    pending_bytes: int
    max_bytes: int
    oldest_pending_age: float | None
    delivered: int
    shed: int
    rejected: int = 0  # events set aside: Kafka refused them for good, or they were unreadable

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
        trail_max_bytes: int = 1024 * 1024 * 1024,
        stats: Stats | None = None,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.retention_seconds = retention_hours * 3600
        self.trail_max_bytes = trail_max_bytes  # used pages of the file, pending rows included
        self.stats = stats or Stats()
        self._lock = new_lock()  # guards the counters, the queue and the journal
        self._db_lock = new_lock()  # guards the SQLite connection
        # journaled, not yet committed: (seq, the row as JSON, the value)
        self._fresh: deque[tuple[int, bytes, bytes]] = deque()
        # writer cursors adopted with records of ``_fresh``, committed with them (see adopt)
        self._cursors_pending: dict[str, str] = {}
        self.committed_cursors: dict[str, str] = {}
        self._lock_file: IO[str] | None = None
        # one thread at a time takes the lock file again (the relay's check and a commit's):
        # a second concurrent attempt would find the first one's flock and call it a stranger's
        self._lock_file_lock = new_lock()
        self._journal: Journal | None = None
        self._last_over_limit_log = 0.0
        self._shed = 0
        self._sync = sync
        self._files: dict[str, int] = {}  # the database file and its WAL, held open to compare
        self._faults: set[str] = set()  # storage faults logged and not yet cleared
        self.restored = 0  # times the spool file was restored after being deleted
        if path != ":memory:":
            self._lock_file = _claim(path)
        try:
            self._db = self._connect(path)
            if path != ":memory:":
                self._hold_files()
                self._journal = Journal(path, fsync=sync == "FULL")
                self._recover()
            self._depth, self._pending_bytes, last = self._db.execute(
                "SELECT count(*) FILTER (WHERE delivered IS NULL), coalesce(sum(length(value))"
                " FILTER (WHERE delivered IS NULL), 0), coalesce(max(seq), 0) FROM events"
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            self._release()
            raise SpoolError(_explain(path, exc)) from exc
        except SpoolError:  # a journal segment that cannot be made: names its path and the fix
            self._db.close()
            self._release()
            raise
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

    def _connect(self, path: str) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if self._sync == 'FULL' else 'NORMAL'}")
        db.executescript(_SCHEMA)
        return db

    def _hold_files(self) -> None:
        """Open the database file and its WAL read-only, to notice when their paths stop naming
        them (a temporary-file cleaner deleted them while this process writes into them)."""
        self._release_files()
        for name in (self.path, self.path + "-wal", self.path + "-shm"):
            with contextlib.suppress(FileNotFoundError):
                self._files[name] = os.open(name, os.O_RDONLY)

    def _release_files(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()

    @classmethod
    def for_settings(cls, settings: Settings, stats: Stats | None = None,
                     path: str | None = None) -> Spool:
        """The spool ``settings`` describe (``KAFKA_SPOOL_*``, ``KAFKA_TRAIL_*``), at ``path``
        if given; raises ``SpoolError`` as the constructor does."""
        return cls(path or settings.spool_path, max_bytes=settings.spool_max_bytes,
                   sync=settings.spool_sync, retention_hours=settings.trail_retention_hours,
                   trail_max_bytes=settings.trail_max_bytes, stats=stats)

    def _recover(self) -> None:
        """Move what an earlier run journaled but did not commit into SQLite."""
        assert self._journal is not None
        self._fresh.extend((meta[0], json_bytes([*meta[:9], len(value)]), value)
                           for meta, value in self._journal.recover())
        recovered = self.ingest()
        if recovered:
            log.warning("recovered %s journaled events into spool %s", recovered, self.path)
        self._journal.remove(self._journal.earlier())  # their records are committed now

    # -- the publish path ------------------------------------------------------------------
    def append(self, envelope: Envelope, topic: str, priority: Priority) -> int | None:
        """Store one event as pending; its sequence number, or None when it was shed under the
        overflow policy."""
        seq = self._append(envelope.value, envelope.key, (), topic, priority,
                           envelope.event_id, envelope.event_type, envelope.user_id)
        if len(self._fresh) >= INGEST_BATCH:
            # A caller outrunning the relay commits its own batch: memory stays flat. The event
            # is journaled (accepted) already: a failed commit is retried by the relay, and
            # reported there, not raised here as if the event were not stored.
            with contextlib.suppress(sqlite3.Error, SpoolError):
                self.ingest()
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
                except SpoolError:
                    raise  # names the segment and the fix already
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
                batch, released = self._ingest("[]", None)
            else:  # the rows and the cursors of the writers they came from, together
                self._db.execute("BEGIN")
                committed = self.committed_seq
                batch, released = [], []
                try:
                    batch, released = self._ingest("[]", None)
                    cursors = self._commit_cursors()
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            self._db.execute("ROLLBACK")
                    if batch or released:  # a failed COMMIT: queued again (see mark_delivered)
                        self.committed_seq = committed
                        self._requeue(batch, released)
                    raise
                self._cursors_committed(cursors)
        self._tidy_journal(released)
        return len(batch)

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
        """After a commit: delete the segments it emptied, and have the next one ready.

        Before deleting any, make sure the records are where a restart looks for them: journal
        segments deleted under us are journaled again, and a spool file deleted under us is
        restored at its path (else the segments are kept).
        """
        if self._journal is None:
            return
        try:
            with self._lock:
                self._journal.check()
        except SpoolError as exc:
            self._fault("rejournal", "%s", exc)
        if not self._database_in_place():
            with self._lock:
                self._journal.give_back(released)
            return
        kept = self._journal.remove(released)  # every record of these is committed now
        if kept:
            with self._lock:
                self._journal.give_back(kept)
        # A next segment that cannot be made is the writer's error when it needs it (raised to
        # the caller, who learns the event was not stored).
        with contextlib.suppress(SpoolError):
            self._journal.prepare()

    def _fault(self, kind: str, message: str, *args: object) -> None:
        """Log a storage fault at ERROR once, until ``_cleared(kind)``."""
        if kind not in self._faults:
            self._faults.add(kind)
            log.error(message, *args)

    def keep_lock(self) -> bool:
        """Take the lock file again if it was deleted: else a second process could claim this
        spool and send its events twice. Returns whether the lock file at the spool's path is
        the one this process holds (False: another process took the path first, and holds it).
        """
        with self._lock_file_lock:
            if self._lock_file is None or self._lock_file.closed:
                return self.path == ":memory:"
            if _same_file(self.path + ".lock", self._lock_file.fileno()):
                return True
            try:
                handle = _claim(self.path)
            except SpoolError as exc:
                self._fault("lock", "spool lock file %s.lock was deleted while in use and cannot "
                            "be taken again: %s", self.path, exc)
                return False
            self._faults.discard("lock")
            self._lock_file.close()
            self._lock_file = handle
        log.error("spool lock file %s.lock was deleted while in use (a temporary-file cleaner?); "
                  "it is taken again. Keep %s out of any cleaner's reach", self.path,
                  os.path.dirname(os.path.abspath(self.path)))
        return True

    def _database_in_place(self) -> bool:
        """Whether the spool file (and its WAL) at ``path`` is the one this process writes; if
        it was deleted or replaced, restore it there from the open database, with SQLite's
        backup API. False while that fails (then no journal segment may be deleted)."""
        self.keep_lock()
        if all(_same_file(name, fd) for name, fd in self._files.items()):
            self._faults.discard("restore")
            return True
        restore = self.path + ".restore"
        with self._db_lock:
            log.error("spool file %s was deleted or replaced while in use (a temporary-file "
                      "cleaner?); restoring it from the open database. Keep %s out of any "
                      "cleaner's reach", self.path, os.path.dirname(os.path.abspath(self.path)))
            closed = False
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(restore)
                target = sqlite3.connect(restore)
                try:
                    self._db.backup(target)
                finally:
                    target.close()
                # The old database is checkpointed and its WAL removed before the copy takes its
                # path: the copy must never open the old database's WAL.
                self._db.close()
                closed = True
                os.replace(restore, self.path)
                self._db = self._connect(self.path)
                self._hold_files()
            except (sqlite3.Error, OSError) as exc:
                self._fault("restore", "spool file %s could not be restored (%s); journal "
                            "segments are kept until it is", self.path, exc)
                if closed:  # carry on with the copy, wherever it is
                    self._db = self._connect(restore if os.path.exists(restore) else self.path)
                return False
        self.restored += 1
        log.error("spool file %s restored (%s events pending); nothing was lost", self.path,
                  self._depth)
        return True

    def _ingest(self, delivered: str, now: float | None
                ) -> tuple[list[tuple[int, bytes, bytes]], list[str]]:
        """Insert the queued records (under the database lock); those whose seq is in the JSON
        array ``delivered`` are inserted delivered at ``now``. Returns them, and the journal
        segments that may go once this is committed (a caller whose transaction then fails
        hands both to ``_requeue``)."""
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
                self._requeue(batch, released)
                raise
            self.committed_seq = batch[-1][0]
        return batch, released

    def _requeue(self, batch: list[tuple[int, bytes, bytes]], released: list[str]) -> None:
        """Records whose insert did not commit: still journaled, queued again for the next
        attempt, and their segments kept until then."""
        with self._lock:
            self._fresh.extendleft(reversed(batch))
            if self._journal is not None:
                self._journal.give_back(released)

    def pending(self, after_seq: int = 0, limit: int = 1000) -> list[SpooledEvent]:
        """Pending events after ``after_seq``, oldest first."""
        self.ingest()
        with self._db_lock:
            rows = self._db.execute(
                "SELECT seq, topic, key, value, extra_headers, event_id, created FROM events "
                "WHERE delivered IS NULL AND seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        ready = []
        for seq, topic, key, value, extra, event_id, created in rows:
            try:
                headers = record_headers(value, extra)
            except (ValueError, TypeError) as exc:  # a record it cannot read never blocks others
                self.quarantine(seq, event_id, exc)
                continue
            ready.append(SpooledEvent(seq, topic, key, value, headers, event_id, created))
        return ready

    def quarantine(self, seq: int, event_id: str, exc: Exception) -> None:
        """Set aside a stored record the relay cannot read (counted, logged with its id)."""
        reason = f"unreadable record: {exc}"
        self.reject(seq, reason)
        self.stats.incr("quarantined")
        log.error("spool %s: event %s (spool #%s) cannot be read and is set aside as rejected "
                  "(%s); the events after it are sent. See 'openalgo-events spool rejected'",
                  self.path, event_id, seq, exc)

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
            inserted: list[tuple[int, bytes, bytes]] = []
            released: list[str] = []
            committed = self.committed_seq
            try:
                inserted, released = self._ingest(batch, now)
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
                # A failed COMMIT (a full disk: SQLite writes the WAL at commit) loses the
                # inserts too: those records must be queued again, or they would never reach
                # SQLite in this run, and the depth would never come back to 0.
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                if inserted or released:
                    self.committed_seq = committed
                    self._requeue(inserted, released)
                raise
            self._cursors_committed(cursors)
        self._tidy_journal(released)
        with self._lock:
            self._depth -= sum(count for _, count, _, _ in rows)
            self._pending_bytes -= sum(size for _, _, size, _ in rows)
        return Counter({event_type: count for event_type, count, _, _ in rows})

    def purge_expired(self, now: float | None = None) -> int:
        """Delete delivered rows older than the retention, then the oldest delivered rows while
        the file's used pages exceed ``trail_max_bytes``; in small batches, never a pending row.
        Returns how many rows were deleted."""
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
                break
        if self.path == ":memory:" or self.used_bytes() <= self.trail_max_bytes:
            return removed
        with self._db_lock:
            rows = self._db.execute("SELECT count(*) FROM events").fetchone()[0]
        row_bytes = self.used_bytes() / max(rows, 1)  # to delete about the excess at each step
        while (excess := self.used_bytes() - self.trail_max_bytes) > 0:
            with self._db_lock:
                count = self._db.execute(
                    "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE delivered IS "
                    "NOT NULL ORDER BY seq LIMIT ?)", (min(2000, 1 + int(excess / row_bytes)),)
                ).rowcount
            removed += count
            if not count:
                break  # only pending rows are left: they are never pruned
        return removed

    def used_bytes(self) -> int:
        """Bytes of the spool file in use (its size less free pages): rows and indexes."""
        with self._db_lock:
            pages, free, size = (self._db.execute(f"PRAGMA {name}").fetchone()[0]
                                 for name in ("page_count", "freelist_count", "page_size"))
        return int((pages - free) * size)

    # -- the trail ------------------------------------------------------------------------------
    def replay(self, *, user_id: str | None = None, since: float | None = None,
               until: float | None = None, topic: str | None = None,
               event_types: Iterable[str] | None = None, dry_run: bool = False) -> int:
        """Queue delivered events of a user (or everyone) in a time window for sending again.

        The copies keep their event id (so consumers can tell it is the same event) and carry
        an ``openalgo_replay`` header. Returns how many events match.
        """
        with self._db_lock:
            rows = self._db.execute(*replay_query(user_id, since, until, event_types)).fetchall()
        if not dry_run:
            for old_topic, key, value, extra, event_id, event_type, user, priority in rows:
                marked = [*stored_headers(extra), (REPLAY_HEADER, b"1")]
                self._append(value, key, marked, topic or old_topic,
                             Priority(priority), event_id, event_type, user)
        return len(rows)

    # -- rejected events ------------------------------------------------------------------------
    def reject(self, seq: int, reason: str) -> tuple[str, str] | None:
        """Set pending event ``seq`` aside as rejected with ``reason``: it leaves the pending
        queue (depth, pending bytes) and is kept in ``rejected`` for ``retry``. Returns its
        (event id, event type), or None when it is no longer pending (delivered meanwhile, or
        rejected already)."""
        with self._db_lock:
            self._db.execute("BEGIN")
            try:
                _, released = self._ingest("[]", None)  # the event may still be only journaled
                row = self._db.execute(
                    "SELECT event_id, event_type, length(value) FROM events WHERE seq = ? AND "
                    "delivered IS NULL", (seq,)).fetchone()
                if row is not None:
                    self._db.execute(
                        f"INSERT OR REPLACE INTO rejected ({_COLUMNS}, reason, rejected) SELECT "
                        f"{_COLUMNS}, ?, ? FROM events WHERE seq = ?", (reason, time.time(), seq))
                    self._db.execute("DELETE FROM events WHERE seq = ?", (seq,))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        self._tidy_journal(released)
        if row is None:
            return None
        with self._lock:
            self._depth -= 1
            self._pending_bytes -= row[2]
        return str(row[0]), str(row[1])

    def rejected_count(self) -> int:
        """How many events are set aside as rejected (a small table: cheap)."""
        with self._db_lock:
            return int(self._db.execute("SELECT count(*) FROM rejected").fetchone()[0])

    def rejected(self, limit: int = 1000) -> list[RejectedEvent]:
        """Rejected events, oldest first."""
        with self._db_lock:
            rows = self._db.execute(
                "SELECT seq, event_id, event_type, user_id, created, rejected, reason, "
                "length(value) FROM rejected ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [RejectedEvent(*row) for row in rows]

    def requeue_retries(self) -> list[tuple[str, int]]:
        """Queue again the rejected events marked for retry (``openalgo-events spool retry``):
        each is appended as a new pending event (same event id, key and value, after every
        event pending now) and leaves ``rejected``. Returns (event id, new seq) of each."""
        with self._db_lock:
            rows = self._db.execute(
                "SELECT seq, topic, key, value, extra_headers, event_type, user_id, priority, "
                "event_id FROM rejected WHERE retry IS NOT NULL ORDER BY seq LIMIT 100"
            ).fetchall()
        done = []
        for old_seq, topic, key, value, extra, event_type, user, priority, event_id in rows:
            seq = self._append(value, key, stored_headers(extra), topic, Priority(priority),
                               event_id, event_type, user)
            if seq is None:
                continue  # shed under the overflow policy: stays rejected, marked for retry
            with self._db_lock:
                self._db.execute("DELETE FROM rejected WHERE seq = ?", (old_seq,))
            done.append((str(event_id), seq))
        return done

    # -- health ---------------------------------------------------------------------------------
    def status(self) -> SpoolStatus:
        with self._db_lock:
            oldest = self._db.execute(
                "SELECT created FROM events WHERE delivered IS NULL ORDER BY seq LIMIT 1"
            ).fetchone()
            delivered = self._db.execute(
                "SELECT count(*) FROM events WHERE delivered IS NOT NULL").fetchone()[0]
            rejected = self._db.execute("SELECT count(*) FROM rejected").fetchone()[0]
        with self._lock:
            if oldest is None and self._fresh:
                oldest = (json.loads(self._fresh[0][1])[5],)  # the row's created
            return SpoolStatus(self.path, self._depth, self._pending_bytes, self.max_bytes,
                               time.time() - oldest[0] if oldest else None, delivered, self._shed,
                               rejected)

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
            self._journal.remove(self._journal.segments())  # all committed by the ingest above
        self._release()

    def _release(self) -> None:
        self._release_files()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


def _headers_text(headers: Sequence[tuple[str, bytes]]) -> str | None:
    return compact_json([(k, v.decode()) for k, v in headers]) if headers else None


def stored_headers(text: str | None) -> list[tuple[str, bytes]]:
    """The extra headers of a stored row (the CloudEvents ones come from ``headers_of``)."""
    return [(k, v.encode()) for k, v in json.loads(text)] if text else []


def replay_query(user_id: str | None, since: float | None, until: float | None,
                 event_types: Iterable[str] | None) -> tuple[str, list[object]]:
    """The SELECT of a replay and its parameters: the delivered events of ``user_id`` (everyone
    when None) created between ``since`` and ``until`` (epoch seconds; from the start, up to
    now, when None) of ``event_types`` (all when none), oldest first, as ``(topic, key, value,
    extra_headers, event_id, event_type, user_id, priority)`` rows."""
    where = ["delivered IS NOT NULL", "created >= ?", "created <= ?"]
    params: list[object] = [since or 0.0, until or time.time()]
    if user_id is not None:
        where.append("user_id = ?")
        params.append(user_id)
    types = list(event_types or ())
    if types:
        where.append(f"event_type IN ({','.join('?' * len(types))})")
        params.extend(types)
    return ("SELECT topic, key, value, extra_headers, event_id, event_type, user_id, priority "
            f"FROM events WHERE {' AND '.join(where)} ORDER BY seq", params)


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
