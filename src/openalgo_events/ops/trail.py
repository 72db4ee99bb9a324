"""The spool seen by an operator: status, rejected events, retries, and replay from the trail.

Everything here reads the spool without a lock (``spool.Spool``), so it is safe while the app
and its relay run; ``retry`` writes one mark in ``rejected.db`` and starts a relay when none
runs. A replay produces copies with its own producer: each keeps its key, value and headers
(so its event id) and gains the ``openalgo_replay: 1`` header.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import Settings
from ..envelope import cloudevents_headers
from ..errors import OpenAlgoEventsError, SpoolError
from ..spool import REPLAY_HEADER, Spool, TrailRecord
from ..spool import format as fmt
from ..spool.directory import SpoolDirectory
from .broker import client_config, cluster_metadata, kafka, unreachable


class ReplayError(OpenAlgoEventsError):
    """Some replayed events were not confirmed by the broker."""


@dataclass(frozen=True)
class SpoolReport:
    """What ``openalgo-events spool status`` prints."""

    path: str
    depth: int
    pending_bytes: int
    oldest_pending_age: float | None
    relay_pid: int | None
    keeper_pid: int | None
    rejected: int
    trail_bytes: int
    oldest_trail: float | None  # unix seconds of the oldest trail segment's last write
    relay_status: dict[str, Any]


def open_spool(settings: Settings, path: str | None) -> Spool:
    """The spool at ``path`` (``--spool``) or the one ``settings`` name; ``SpoolError`` with the
    fix when there is none."""
    if (path or settings.spool_path) == ":memory:":
        raise SpoolError("KAFKA_SPOOL_PATH is :memory:, so there is no spool to read; pass "
                         "--spool with the app's spool directory")
    return Spool(os.path.abspath(path) if path else settings.spool_location)


def report(spool: Spool) -> SpoolReport:
    ledger = spool.ledger()
    pending = spool.pending(ledger)
    trail_bytes, oldest_trail = spool.trail_size()
    age = None if pending.oldest_created is None else max(
        0.0, time.time() - pending.oldest_created)
    return SpoolReport(spool.path, pending.depth, pending.bytes, age, spool.relay_pid(),
                       spool.keeper_pid(), len(spool.rejected()), trail_bytes, oldest_trail,
                       spool.status())


def retry(settings: Settings, spool: Spool, event_id: str) -> str:
    """Mark ``event_id`` for sending again; what will happen, truthfully. Starts a relay (its
    keeper) when none runs. Raises ``SpoolError`` when no rejected event has that id."""
    if not spool.retry(event_id):
        raise SpoolError(f"no rejected event {event_id} in spool {spool.path}; list them with "
                         "'openalgo-events spool rejected'")
    pid = spool.relay_pid()
    if pid is not None:
        return (f"event {event_id} marked for retry; the relay (pid {pid}) sends it within a "
                "second, after the events pending now")
    if not settings.bootstrap_servers:
        return (f"event {event_id} marked for retry, but no relay runs and none can be started "
                "here without KAFKA_BOOTSTRAP_SERVERS; it is sent when a relay next starts")
    from ..host.starter import spawn_keeper

    if spool.keeper_pid() is None and not spawn_keeper(settings.with_spool(spool.path),
                                                       spool.directory):
        return (f"event {event_id} marked for retry, but no relay runs and starting one failed "
                "(see the log); start 'openalgo-events relay'")
    return (f"event {event_id} marked for retry; no relay was running, so one was started (its "
            f"log: {os.path.join(spool.path, fmt.RELAY_LOG)}); it sends the event within a "
            "few seconds")


def replay(settings: Settings, events: list[TrailRecord], topic: str, *, timeout: float = 30.0,
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
        value, key, headers = replay_record(event)
        while True:
            try:
                producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery)
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


def replay_record(event: TrailRecord) -> tuple[bytes, bytes, Any]:
    """(value, key, headers=...) of a replayed copy: the original's, plus the replay header."""
    meta = event.meta
    headers = cloudevents_headers(meta[fmt.EVENT_ID], meta[fmt.EVENT_TYPE], meta[fmt.SOURCE],
                                  meta[fmt.TIMESTAMP])
    headers += [(str(k), str(v).encode()) for k, v in meta[fmt.EXTRA_HEADERS] or []
                if k != REPLAY_HEADER]
    headers.append((REPLAY_HEADER, b"1"))
    return event.value, meta[fmt.USER_ID].encode(), headers


def spool_location_problem(settings: Settings) -> str | None:
    """Why the app could not keep its spool where ``settings`` say, or None when it could."""
    path = settings.spool_location
    if path == ":memory:":
        return None
    from ..spool import refuse_version_1

    named = (f"KAFKA_SPOOL_PATH={settings.spool_path!r}: " if settings.spool_path
             else "KAFKA_SPOOL_PATH is unset, so the spool is the default one: ")
    try:
        refuse_version_1(path)
        if os.path.isdir(path):
            SpoolDirectory(path, create=False).close()
            writable = os.access(path, os.W_OK)
        else:
            parent = os.path.dirname(path)
            if not settings.spool_path:
                parent = os.path.dirname(parent)  # the default's openalgo_events_spool/ is made
            if not os.path.isdir(parent):
                return (f"{named}the spool {path} cannot be made: directory {parent} does not "
                        "exist; create it or set KAFKA_SPOOL_PATH to a directory in an "
                        "existing one")
            writable = os.access(parent, os.W_OK)
    except SpoolError as exc:
        return f"{named}{exc}"
    if not writable:
        return (f"{named}the spool {path} is not writable by this user; fix the permissions or "
                "set KAFKA_SPOOL_PATH to another location")
    return None
