"""The spool's trail, read-only, so it can be inspected and replayed while the app runs.

The app holds an exclusive lock on its spool, so these tools never open ``Spool``: they read
the SQLite file with ``mode=ro`` and re-publish with their own producer. A replayed copy keeps
its key, value and headers (so its event id) and gains the ``openalgo_replay: 1`` header.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ..config import Settings
from ..errors import OpenAlgoEventsError, SpoolError
from ..spool import REPLAY_HEADER, RejectedEvent, _explain, record_headers, uncommitted
from .broker import client_config, cluster_metadata, kafka, unreachable


class ReplayError(OpenAlgoEventsError):
    """Some replayed events were not confirmed by the broker."""


@dataclass(frozen=True)
class TrailStatus:
    path: str
    depth: int
    pending_bytes: int
    oldest_pending_age: float | None
    delivered: int
    delivered_bytes: int
    oldest_delivered: float | None  # unix seconds of the oldest replayable event
    rejected: int = 0  # events set aside (Kafka refused them for good, or unreadable)


@dataclass(frozen=True)
class TrailEvent:
    """One delivered event as the spool stored it."""

    seq: int
    event_id: str
    event_type: str
    user_id: str
    created: float
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


class Trail:
    """A read-only view of a spool file.

    >>> with Trail("openalgo_events_spool.db") as trail:  # doctest: +SKIP
    ...     print(trail.status().depth)
    """

    def __init__(self, path: str) -> None:
        if path == ":memory:":
            raise SpoolError("KAFKA_SPOOL_PATH is :memory:, so there is no spool file to read; "
                             "pass --spool with the path of the app's spool file")
        if not Path(path).is_file():
            raise SpoolError(f"no spool file at {path}; pass --spool (or set KAFKA_SPOOL_PATH) "
                             "to the file the app writes, as seen from this directory")
        self.path = path
        try:
            self._db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
            self._db.execute("SELECT 1 FROM events LIMIT 1")
        except sqlite3.Error as exc:
            raise SpoolError(_explain(path, exc)) from exc

    def status(self) -> TrailStatus:
        depth, pending_bytes, oldest_pending, committed = self._db.execute(
            "SELECT count(*) FILTER (WHERE delivered IS NULL), coalesce(sum(length(value)) "
            "FILTER (WHERE delivered IS NULL), 0), min(created) FILTER (WHERE delivered IS NULL),"
            " coalesce(max(seq), 0) FROM events").fetchone()
        journaled = uncommitted(self.path, committed)  # accepted, not yet in SQLite
        depth += len(journaled)
        pending_bytes += sum(size for _, _, size in journaled)
        if journaled and oldest_pending is None:
            oldest_pending = journaled[0][1]
        delivered, delivered_bytes, oldest_delivered = self._db.execute(
            "SELECT count(*), coalesce(sum(length(value)), 0), min(created) FROM events "
            "WHERE delivered IS NOT NULL").fetchone()
        age = time.time() - oldest_pending if oldest_pending is not None else None
        return TrailStatus(self.path, depth, pending_bytes, age, delivered, delivered_bytes,
                           oldest_delivered, len(self.rejected()))

    def rejected(self) -> list[RejectedEvent]:
        """Events set aside as rejected, oldest first (none in a spool from before the table)."""
        try:
            rows = self._db.execute(
                "SELECT seq, event_id, event_type, user_id, created, rejected, reason, "
                "length(value) FROM rejected ORDER BY seq").fetchall()
        except sqlite3.OperationalError:  # no such table: written by an earlier version
            return []
        return [RejectedEvent(*row) for row in rows]

    def delivered(self, *, since: float, until: float, user_id: str | None = None,
                  event_types: Iterable[str] = ()) -> list[TrailEvent]:
        """Delivered events created in ``[since, until]``, oldest first."""
        where = ["delivered IS NOT NULL", "created >= ?", "created <= ?"]
        params: list[object] = [since, until]
        if user_id is not None:
            where.append("user_id = ?")
            params.append(user_id)
        types = list(event_types)
        if types:
            where.append(f"event_type IN ({','.join('?' * len(types))})")
            params.extend(types)
        rows = self._db.execute(
            "SELECT seq, event_id, event_type, user_id, created, topic, key, value, "
            f"extra_headers FROM events WHERE {' AND '.join(where)} ORDER BY seq",
            params).fetchall()
        return [
            TrailEvent(seq, event_id, event_type, user, created, topic, bytes(key), bytes(value),
                       record_headers(bytes(value), extra))
            for seq, event_id, event_type, user, created, topic, key, value, extra in rows
        ]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Trail:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def replay(settings: Settings, events: list[TrailEvent], topic: str, *, timeout: float = 30.0,
           on_delivered: Callable[[int], None] = lambda _: None) -> int:
    """Produce ``events`` again to ``topic`` and wait for every delivery report.

    Returns how many were confirmed; raises ``ReplayError`` if any was not within ``timeout``.
    """
    ck = kafka()
    producer = ck.Producer({**settings.producer_config(), **client_config(settings)})
    cluster_metadata(settings, min(timeout, 10.0), producer)  # fail fast when nobody answers
    failures: list[str] = []
    confirmed = 0

    def on_delivery(error: object, _msg: object) -> None:
        nonlocal confirmed
        if error is not None:
            failures.append(str(getattr(error, "str", lambda: error)()))
            return
        confirmed += 1
        on_delivered(1)

    for event in events:
        headers = [(k, v) for k, v in event.headers if k != REPLAY_HEADER]
        headers.append((REPLAY_HEADER, b"1"))
        while True:
            try:
                producer.produce(topic, event.value, event.key, headers=headers,
                                 on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)  # the local queue is full: let deliveries drain it
        producer.poll(0)
    left = producer.flush(timeout)
    if left and not failures and confirmed == 0:
        raise unreachable(settings, "no delivery report", timeout)
    if failures or left:
        first = f"; first error: {failures[0]}" if failures else ""
        raise ReplayError(f"{confirmed} of {len(events)} events re-published to {topic}; "
                          f"{len(failures)} failed and {left} unconfirmed after {timeout:g}s"
                          f"{first}. Run the same replay again: consumers dedupe by event_id")
    return confirmed


def spool_location_problem(path: str) -> str | None:
    """Why the app could not keep its spool at ``path``, or None when it could."""
    if path == ":memory:":
        return None
    directory = Path(path).resolve().parent
    if not directory.is_dir():
        return (f"KAFKA_SPOOL_PATH={path!r}: directory {directory} does not exist; create it or "
                "point KAFKA_SPOOL_PATH at a file in an existing directory")
    if not os.access(directory, os.W_OK) or (Path(path).exists() and not os.access(path, os.W_OK)):
        return (f"KAFKA_SPOOL_PATH={path!r} is not writable by this user; fix the permissions "
                "or choose another location")
    return None


def mark_for_retry(path: str, event_id: str) -> bool:
    """Mark rejected event ``event_id`` in spool ``path`` for sending again; the app's relay
    (now, or at its next start) queues it. Writes only that row, so it is safe while the app
    runs. False when no rejected event has that id."""
    if not Path(path).is_file():
        raise SpoolError(f"no spool file at {path}; pass --spool (or set KAFKA_SPOOL_PATH) to "
                         "the file the app writes, as seen from this directory")
    try:
        with sqlite3.connect(path, timeout=10) as db:
            changed = db.execute("UPDATE rejected SET retry = ? WHERE event_id = ?",
                                 (time.time(), event_id)).rowcount
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return False
        raise SpoolError(_explain(path, exc)) from exc
    return bool(changed)
