"""Kafka from the host's side: journal the event, ring the relay's doorbell, return.

Nothing of the Kafka path runs in the host process: no librdkafka, no SQLite, no thread. A
publish validates (the publisher's job), frames the envelope into this process's own journal (a
memcpy into a shared mapping, durable against a crash of the host once it returns) and sends one
byte to the relay process, which owns the producer, the trail and recovery
(``openalgo_events.relay``). The directory layout and record format are ``spooldir``'s.

Why a separate process: the host (OpenAlgo under gunicorn's eventlet worker) monkey-patches
threading and logging, forks workers, and exits whenever it likes; a relay thread inside it died
on green locks and left events behind at exit. The relay process is started by the gunicorn
hook, by ``openalgo-events relay`` (systemd, sidecar), or, when none runs, by the first publish
here, detached so that it outlives a short script.

A forked child (gunicorn ``--preload``, a publisher built at import) opens its own journal at
its first publish: the parent's mapping and lock are dropped in the child (``os.register_at_fork``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
import weakref
from collections.abc import Iterable
from typing import IO, Any

from .. import spooldir
from .._journal import Journal, encode
from .._threads import new_lock, wait_until
from ..catalog import CATALOG, Catalog, Priority
from ..config import Settings
from ..envelope import Envelope, compact_json, json_bytes
from ..errors import SpoolError
from ..stats import Stats

log = logging.getLogger("openalgo_events.kafka")

CHECK_RELAY_EVERY = 1.0  # seconds between checks that a relay holds the spool directory
# A ring costs a system call (about 3 µs, a fifth of a publish) and the relay, once woken, keeps
# reading until a read finds nothing: so a publish within this many seconds of the last ring
# skips its own. At 100 events/s every event rings; flat out, about one in 30 does. The price:
# the last event of a burst may wait for the relay's next scan (spooldir.SCAN_EVERY, 50 ms).
RING_GAP = 0.0005
# Seconds a relay this process started has to take the spool's lock (a Python start, slower on
# a busy machine) before this process starts another: a second one would only log that the
# first holds the spool and exit.
RELAY_START_GRACE = 10.0
# FALSE where something else runs the relay (systemd, a sidecar) or none may run (unit tests).
ENV_AUTOSTART = "OPENALGO_EVENTS_RELAY_AUTOSTART"
_LIVE: weakref.WeakSet[RelayedKafkaTransport] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for transport in list(_LIVE):
        transport._forget_parent()


os.register_at_fork(after_in_child=_after_fork_in_child)


class RelayedKafkaTransport:
    """Hands envelopes to the relay process through this process's journal.

    >>> transport = RelayedKafkaTransport(Settings.from_env())  # doctest: +SKIP

    ``publish`` raises ``SpoolError`` when the event could not be written (the journal
    directory is not writable, the disk is full): an event that is not stored is never
    reported accepted.
    """

    name = "kafka"

    def __init__(self, settings: Settings, *, stats: Stats | None = None,
                 catalog: Catalog = CATALOG, start_relay: bool = True) -> None:
        self.settings = settings
        self.spool_path = os.path.abspath(settings.spool_path)
        self.topic = settings.order_events_topic
        self.stats = stats or Stats()
        self._catalog = catalog
        self._start_relay = start_relay
        self._lock = new_lock()  # guards the journal and the sequence
        self._journal: Journal | None = None
        self._lock_file: IO[bytes] | None = None
        self._writer = ""
        self._seq = 0
        self._pid = os.getpid()
        self._bell_address = spooldir.doorbell_address(self.spool_path)
        self._next_check = self._last_ring = 0.0
        self._relay_started = float("-inf") # monotonic time of our last start_detached
        self._closed = False
        directory = os.path.dirname(self.spool_path)
        if not os.path.isdir(directory):
            raise SpoolError(f"spool directory {directory} does not exist; create it or set "
                             "KAFKA_SPOOL_PATH to a file in an existing, writable directory")
        # A mismatch is a configuration error: it stops start-up, before any event is taken.
        spooldir.Identity(settings.bootstrap_servers, self.topic).claim(self.spool_path)
        self._bell = spooldir.doorbell_socket()
        _LIVE.add(self)

    # -- the publish path ---------------------------------------------------------------------
    def publish(self, envelope: Envelope) -> None:
        spec = self._catalog.get(envelope.event_type)
        priority = spec.priority if spec else Priority.HIGH
        self._write(envelope.value, [envelope.event_id, envelope.event_type, envelope.user_id,
                                     int(priority), time.time(), self.topic,
                                     envelope.key.decode(), None], envelope.event_type,
                    (envelope.timestamp, envelope.source))

    def _write(self, value: bytes, fields: list[Any], event_type: str,
               tail: tuple[Any, ...] | list[Any] = ()) -> None:
        """Journal one record: ``fields`` are the row's event_id .. extra_headers (spooldir)."""
        with self._lock:
            journal = self._journal or self._open()
            seq = self._seq + 1
            try:
                journal.write(encode(json_bytes([seq, *fields, len(value), *tail]), value))
            except (OSError, ValueError) as exc:
                raise SpoolError(f"spool journal {journal.current} cannot be written ({exc}); "
                                 "free space or fix permissions") from exc
            self._seq = seq
            if journal._retired:  # full segments: the relay deletes them, not the writer
                journal.release(journal.take_retired())
            now = time.monotonic()
            if now >= self._next_check:
                # A current segment deleted under us (a temporary-file cleaner) is written again
                # where the relay and a restart look for it (duplicates, never a loss).
                journal.check()
        if now - self._last_ring >= RING_GAP:
            self._last_ring = now
            spooldir.ring(self._bell, self._bell_address)
        self.stats.add(Stats.event_key("published", event_type, self.name))
        if now >= self._next_check:
            self._next_check = now + CHECK_RELAY_EVERY
            self._ensure_relay()

    def _open(self) -> Journal:
        """This process's journal: its own directory and lock (called under the lock)."""
        if self._closed:
            raise SpoolError("this publisher is closed; build a new one")
        writer = spooldir.writer_id()
        parent = spooldir.writers_dir(self.spool_path)
        path, hidden = os.path.join(parent, writer), os.path.join(parent, f".{writer}")
        try:
            # Made under a hidden name, locked, then renamed: the relay never sees a writer
            # directory whose lock is not held yet (it would take it for a dead writer's).
            os.makedirs(hidden, exist_ok=True)
            handle = spooldir.take_lock(os.path.join(hidden, "lock"))
            assert handle is not None  # a new directory: nobody else knows its name
            self._lock_file = handle
            os.rename(hidden, path)  # the lock (an open descriptor) goes with it
            self._journal = Journal(os.path.join(path, spooldir.JOURNAL_NAME),
                                    fsync=self.settings.spool_sync == "FULL")
        except OSError as exc:
            raise SpoolError(f"cannot create the journal {path} ({exc.strerror}); make "
                             f"{os.path.dirname(path)} writable or set KAFKA_SPOOL_PATH to a "
                             "writable location") from exc
        self._writer, self._seq, self._pid = writer, 0, os.getpid()
        # After the directory and its lock exist, so that a relay deciding to exit sees us
        # (it scans for writers once more after releasing its lock; see relay.process).
        self._next_check = time.monotonic() + CHECK_RELAY_EVERY
        self._ensure_relay()
        return self._journal

    def _forget_parent(self) -> None:
        """In a forked child: drop the parent's journal and lock without touching its files.

        Closing our copies unmaps and closes only in this process: the parent keeps its mapping
        and its flock (a flock goes only with the last descriptor of its open file).
        """
        journal, lock_file = self._journal, self._lock_file
        self._journal = self._lock_file = None
        self._lock = new_lock()  # the parent's may have been held by another thread at fork
        if journal is not None:
            journal.close()
        if lock_file is not None:
            lock_file.close()
        self._bell.close()  # our descriptor only
        self._bell = spooldir.doorbell_socket()
        self._seq, self._pid, self._writer = 0, os.getpid(), ""
        self._next_check = 0.0

    def _ensure_relay(self) -> None:
        """Start a detached relay when none holds the spool directory."""
        # read now, not at construction: gunicorn's master sets it after a --preload import
        autostart = os.environ.get(ENV_AUTOSTART, "TRUE").upper() not in ("FALSE", "0", "NO")
        if not (self._start_relay and autostart):
            return
        if spooldir.relay_running(self.spool_path):
            self._relay_started = float("-inf")  # it started: if it dies, start one at once
            return
        now = time.monotonic()
        if now - self._relay_started < RELAY_START_GRACE:
            return  # the one we started has not taken the spool's lock yet
        self._relay_started = now
        start_detached(self.settings, self.spool_path)

    @property
    def spool(self) -> Trail:
        """The delivered-events trail, for replays (``inbound`` replay requests)."""
        return Trail(self)

    # -- lifecycle ------------------------------------------------------------------------------
    def flush(self, timeout: float = 5.0) -> int:
        """Wait (cooperatively) until the relay reports this process's events delivered;
        return how many are not confirmed yet."""
        if self._seq:
            self._ensure_relay()  # one killed while this process was idle

        def confirmed() -> bool:
            spooldir.ring(self._bell, self._bell_address)  # a relay asleep turns at once
            return self._unconfirmed() == 0

        wait_until(confirmed, timeout, step=0.002)
        return self._unconfirmed()

    @property
    def journaled(self) -> int:
        """Events this process has written to its journal (since it opened it)."""
        return self._seq

    def _unconfirmed(self) -> int:
        if not self._seq:
            return 0
        status = spooldir.read_status(self.spool_path) or {}
        mine = (status.get("writers") or {}).get(self._writer) or {}
        return max(0, self._seq - int(mine.get("delivered", 0)))

    def close(self, timeout: float = 5.0) -> int:
        """Release the journal at once, never waiting on the network (``timeout`` is accepted
        for the transport protocol and ignored): what is not confirmed yet is the relay's to
        send, which keeps running until this process's journal is drained. Returns how many
        of this process's events the relay has not confirmed delivered yet."""
        left = self._unconfirmed()
        with self._lock:
            self._closed = True
            if self._journal is not None:
                self._journal.close()
            if self._lock_file is not None:
                self._lock_file.close()
            self._journal = self._lock_file = None
        spooldir.ring(self._bell, self._bell_address)
        self._bell.close()
        if left:
            log.info("publisher closed with %s events not yet confirmed; the relay for spool "
                     "%s delivers them", left, self.spool_path)
        return left

    def health(self) -> dict[str, Any]:
        return relay_health(self.spool_path, self.topic, self.settings.stall_timeout_seconds,
                            unconfirmed=self._unconfirmed())


def relay_health(spool_path: str, topic: str, stall_timeout: float,
                 unconfirmed: int | None = None) -> dict[str, Any]:
    """The Kafka health a host reports, read from the relay's status file (no thread here)."""
    status = spooldir.read_status(spool_path) or {}
    running = spooldir.relay_running(spool_path)
    age = status.get("oldest_pending_age_seconds")
    if running:
        fresh = time.time() - float(status.get("updated", 0)) < spooldir.STALE_AFTER
        # the relay's own verdict (brokers, conditions, problems, pending age), while fresh
        healthy = fresh and status.get("healthy") is True and not (
            age is not None and age > max(stall_timeout, 30.0))
    else:
        # No relay: healthy only while nothing waits for one (an auto-started relay exits when
        # idle; the next publish starts one again).
        status = {k: v for k, v in status.items() if k in ("spool_depth", "spool_shed")}
        healthy = not status.get("spool_depth") and not unconfirmed
        age = None
    return {
        "transport": "kafka",
        "healthy": healthy,
        "relay_running": running,
        "relay_pid": status.get("pid") if running else None,
        "relay_port": status.get("port") if running else None,
        "broker_reachable": status.get("broker_reachable") if running else None,
        "topic": topic,
        "spool_path": spool_path,
        "spool_depth": status.get("spool_depth"),
        "spool_pending_bytes": status.get("spool_pending_bytes"),
        "spool_over_limit": status.get("spool_over_limit"),
        "spool_shed": status.get("spool_shed"),
        "spool_rejected": status.get("spool_rejected"),
        "oldest_pending_age_seconds": age,
        "in_flight": status.get("in_flight"),
        "producer_rebuilds": status.get("producer_rebuilds"),
        "last_error": status.get("last_error"),
        "condition": status.get("condition") if running else None,
        "condition_detail": status.get("condition_detail") if running else None,
        "problem": status.get("problem") if running else None,
        "unconfirmed": unconfirmed,
    }


def relay_command(spool_path: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "openalgo_events.relay", "--spool", spool_path, *extra]


def start_detached(settings: Settings, spool_path: str) -> None:
    """Start a relay in its own session, reparented at once (no zombie left with the host).

    ``sh`` starts the relay in the background and exits; waiting for ``sh`` takes about a
    millisecond. The relay gets the publisher's settings through its environment and appends
    its output to ``<spool>.relay.log``. Two processes racing here start two relays; the second
    finds the lock taken and exits.
    """
    env = {**os.environ, **settings.to_env()}
    env.setdefault("PYTHONPATH", os.pathsep.join(p for p in sys.path if p))
    command = relay_command(spool_path, "--exit-when-idle")
    try:
        with open(spooldir.log_path(spool_path), "ab") as out:
            proc = subprocess.Popen(["/bin/sh", "-c", '"$@" </dev/null &', "sh", *command],
                                    stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=env, close_fds=True)
        proc.wait(5)
    except (OSError, subprocess.SubprocessError) as exc:
        log.error("could not start the Kafka relay for %s (%s); events stay in the spool "
                  "until one runs: start 'openalgo-events relay'", spool_path, exc)
        return
    log.info("started a Kafka relay for spool %s (log: %s)", spool_path,
             spooldir.log_path(spool_path))


class Trail:
    """The relay's trail of delivered events, seen from a host: replays are read from SQLite
    (read-only, off the publish path) and journaled again by this process, as new records with
    the same event ids and the ``openalgo_replay: 1`` header, for the relay to send.

    >>> transport.spool.replay(user_id="alice", since=time.time() - 3600)  # doctest: +SKIP
    2
    """

    def __init__(self, transport: RelayedKafkaTransport) -> None:
        self.transport = transport
        self.path = transport.spool_path

    def replay(self, *, user_id: str | None = None, since: float | None = None,
               until: float | None = None, topic: str | None = None,
               event_types: Iterable[str] | None = None, dry_run: bool = False) -> int:
        """Journal again the delivered events of a user (or everyone) in a window; how many
        match. The same selection as ``Spool.replay``."""
        import sqlite3

        from ..spool import REPLAY_HEADER, replay_query, stored_headers

        if not os.path.exists(self.path):
            return 0
        with contextlib.closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)) as db:
            rows = db.execute(*replay_query(user_id, since, until, event_types)).fetchall()
        if not dry_run:
            for old_topic, key, value, extra, event_id, event_type, user, priority in rows:
                marked = [(k, v.decode()) for k, v in stored_headers(extra)]
                marked.append((REPLAY_HEADER, "1"))
                self.transport._write(value, [event_id, event_type, user, priority, time.time(),
                                              topic or old_topic, bytes(key).decode(),
                                              compact_json(marked)], event_type)
        return len(rows)
