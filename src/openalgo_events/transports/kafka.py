"""Kafka from the app's side: journal the event, ring the relay's doorbell, return.

Nothing of Kafka runs in the app process: no librdkafka, no SQLite. A publish (validated by the
publisher) is framed into this process's own journal (``host.journal``: one ``pwrite``, durable
against a crash of the app once it returns) and one datagram tells the relay; the relay process
(``openalgo_events.relay``) owns the producer, delivery reports, recovery and the trail. While
some of this process's events are not acknowledged, one thread (``host.starter.Watch``) keeps
a relay running and repairs the journal if its files were damaged.

Why a separate process: the host (OpenAlgo under gunicorn's eventlet worker) monkey-patches
threading and logging, forks workers and exits whenever it likes; a relay inside it died on
green locks and left events behind at exit.

``KAFKA_SPOOL_PATH=:memory:`` keeps the relay inside this process, on a real thread, over a
private temporary spool deleted at ``close`` (tests, notebooks): the same code, no durability.

A forked child (gunicorn ``--preload``, a publisher built at import) opens its own journal at its
first publish: the parent's is dropped in the child (``os.register_at_fork``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterable
from typing import Any

from .._threads import new_lock, wait_until
from ..catalog import CATALOG, Catalog, Priority
from ..config import Settings
from ..envelope import Envelope
from ..errors import SpoolError
from ..host.journal import JournalWriter
from ..host.starter import Starter, Watch, autostart, relay_running
from ..spool import REPLAY_HEADER, LedgerEntry, Spool, identity, open_directory
from ..spool import format as fmt
from ..spool.directory import Bell, SpoolDirectory, lock_holder
from ..stats import Stats

log = logging.getLogger("openalgo_events.kafka")

# A ring costs a system call, and the relay, once woken, reads on until a read finds nothing
# and reads once more 2 ms later: a publish within this many seconds of the last ring skips
# its own (at 100 events/s every event rings; flat out, about one in 30).
RING_GAP = 0.001
STALE_AFTER = 5.0  # a status the relay has not rewritten for this long is not its word now
_LIVE: weakref.WeakSet[KafkaTransport] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for transport in list(_LIVE):
        try:
            transport._forget_parent()
        except Exception:  # one publisher's trouble must not leave the others the parent's
            log.exception("a forked child could not set up its own journal for %s",
                          transport.spool_path)


os.register_at_fork(after_in_child=_after_fork_in_child)


class KafkaTransport:
    """Hands envelopes to the relay process through this process's journal.

    >>> transport = KafkaTransport(Settings.from_env())  # doctest: +SKIP

    Raises ``SpoolError`` when the spool directory cannot be used (with the path and the fix)
    and ``ConfigError`` when it belongs to another cluster or topic. ``publish`` raises
    ``SpoolError`` when the event could not be written (disk full, read-only directory): an
    event that is not stored is never reported accepted.
    """

    name = "kafka"

    def __init__(self, settings: Settings, *, stats: Stats | None = None,
                 catalog: Catalog = CATALOG, start_relay: bool = True) -> None:
        self.settings = settings
        self.topic = settings.order_events_topic
        self.stats = stats or Stats()
        if settings.librdkafka:  # ours are checked by Settings; librdkafka's only by librdkafka
            from ..relay.producer import check_config

            check_config(settings.producer_config())
        self._catalog = catalog
        self._relay: Any = None  # the in-process relay of an in-memory spool
        self._temporary = settings.spool_path == ":memory:"
        if self._temporary:
            directory = SpoolDirectory(tempfile.mkdtemp(prefix="openalgo-events-spool-"))
        else:
            directory = open_directory(settings)
        self._spool = directory
        self.spool_path = directory.path
        try:
            # A mismatch is a configuration error: it stops start-up, before any event.
            identity.claim(directory, settings.bootstrap_servers, self.topic)
        except BaseException:
            directory.close()
            raise
        self._lock = new_lock()  # guards the journal and the bell
        self._journal: JournalWriter | None = None
        self._bell = Bell(directory)
        self._last_ring = 0.0
        self._closed = False
        self._starter = Starter(settings, directory)
        self._watch: Watch | None = None
        if self._temporary:
            from ..relay.process import Relay

            self._relay = Relay(settings.with_spool(self.spool_path), stats=self.stats,
                                in_process=True).start_thread()
        elif start_relay:
            self._watch = Watch(self._look, self._starter)
        _LIVE.add(self)

    # -- the publish path ---------------------------------------------------------------------
    def publish(self, envelope: Envelope) -> None:
        spec = self._catalog.get(envelope.event_type)
        priority = spec.priority if spec else Priority.HIGH
        meta = [envelope.event_id, envelope.event_type, envelope.user_id, int(priority),
                time.time(), envelope.timestamp, envelope.source, None]
        self._write(meta, envelope.value)
        self.stats.add(Stats.event_key("published", envelope.event_type, self.name))

    def _write(self, meta: list[Any], value: bytes) -> None:
        """Journal one record (``meta`` without its seq: ``spool.format``) and ring."""
        with self._lock:
            first = self._journal is None
            journal = self._journal or self._open()
            journal.append(meta, value)
            if first and self._watch is not None:
                # Now, not on the watch's thread: a script (or a forked child) may exit right
                # after this publish, and the thread with it. After the append: a relay going
                # idle looks for events once it let go of the spool, so one of the two sees
                # the other. A millisecond, once per process.
                self._starter.ensure()
            now = time.monotonic()
            if now - self._last_ring >= RING_GAP:
                self._last_ring = now
                self._bell.ring(journal.name.encode())
        if self._watch is not None:
            self._watch.poke()

    def _open(self) -> JournalWriter:
        """This process's journal (called under the lock)."""
        if self._closed:
            raise SpoolError("this publisher is closed; build a new one")
        self._journal = JournalWriter(self._spool, sync=self.settings.spool_sync == "FULL")
        return self._journal

    def _look(self) -> bool:
        """The watch's turn: repair the journal if it was damaged; whether any of our events
        still waits for the relay."""
        with self._lock:
            journal = self._journal
            if journal is None:
                return False
            if self._spool.gone():  # the whole spool deleted: make it again, claim it
                self._spool = open_directory(self.settings)
                identity.claim(self._spool, self.settings.bootstrap_servers, self.topic)
                journal.spool = self._spool
                self._bell.close()
                self._bell = Bell(self._spool)
                self._starter.spool = self._spool
            journal.check(lambda: self._acknowledged().acked_seq)
            return self._acknowledged().acked_seq < journal.seq

    def _forget_parent(self) -> None:
        """In a forked child: drop the parent's journal and thread without touching its files
        (its flock lives on in the parent's descriptor)."""
        journal, self._journal = self._journal, None
        self._lock = new_lock()  # the parent's may have been held by another thread at fork
        if journal is not None:
            journal.forget()
        self._bell.close()  # our copy of the parent's socket
        self._bell = Bell(self._spool)
        # "a relay was just started" was the parent's: the child looks for itself
        self._starter = Starter(self.settings, self._spool)
        if self._watch is not None:
            self._watch = Watch(self._look, self._starter)

    @property
    def spool(self) -> HostTrail:
        """The trail of delivered events, for replays (the ESB's ``replay_request``)."""
        return HostTrail(self)

    # -- what the relay acknowledged ----------------------------------------------------------
    def _acknowledged(self) -> LedgerEntry:
        journal = self._journal
        if journal is None:
            return LedgerEntry(0, 0, 0, 0, 0)
        try:
            return Spool.of(self._spool).ledger().get(journal.name, LedgerEntry(0, 0, 0, 0, 0))
        except OSError:
            return LedgerEntry(0, 0, 0, 0, 0)

    @property
    def journaled(self) -> int:
        """Events this process has written to its journal (since it opened it)."""
        journal = self._journal
        return journal.seq if journal is not None else 0

    def _unconfirmed(self) -> tuple[int, int]:
        """(not yet done, done but not on the topic: set aside as rejected or shed)."""
        seq = self.journaled
        if not seq:
            return 0, 0
        entry = self._acknowledged()
        return max(0, seq - entry.acked_seq), entry.rejected + entry.shed

    # -- lifecycle ----------------------------------------------------------------------------
    def flush(self, timeout: float = 5.0) -> int:
        """Wait (cooperatively) until the relay has acknowledged every event of this process;
        return how many are not confirmed on the topic: still waiting, plus those set aside
        (rejected by Kafka, or shed over ``KAFKA_SPOOL_MAX_BYTES``; ``spool rejected``)."""
        if not self.journaled:
            return 0
        with self._lock:
            self._bell.ring(b"flush")
        if self._watch is not None:
            self._watch.poke()  # a relay killed while this process was idle is replaced
        wait_until(lambda: self._unconfirmed()[0] == 0, timeout, step=0.002)
        waiting, set_aside = self._unconfirmed()
        return waiting + set_aside

    def close(self, timeout: float = 5.0) -> int:
        """Release the journal at once, never waiting on the network (``timeout`` bounds only
        an in-memory spool's in-process relay): what is not confirmed yet is the relay's to
        send, and a relay is started if none runs. Returns how many of this process's events
        are not confirmed on the topic yet (as ``flush``)."""
        waiting, set_aside = self._unconfirmed()
        _LIVE.discard(self)  # a forked child has nothing of a closed publisher to set up
        with self._lock:
            self._closed = True
            if self._journal is not None:
                self._journal.close()
            self._bell.ring(b"closed")
            self._bell.close()
        if self._watch is not None:
            self._watch.stop()
        if self._relay is not None:
            self._relay.stop_and_join(timeout)
            waiting = int(self._relay.pending_count())
            with contextlib.suppress(OSError):
                shutil.rmtree(self.spool_path)
            self._spool.close()
            if waiting:
                log.warning("closing with %s events undelivered: lost (in-memory spool)",
                            waiting)
            return waiting + set_aside
        if waiting and autostart():
            self._starter.ensure()  # no watch outlives us: the relay must run now
        if waiting:
            log.info("publisher closed with %s events not yet confirmed; the relay for spool "
                     "%s delivers them", waiting, self.spool_path)
        return waiting + set_aside

    def health(self) -> dict[str, Any]:
        if self._relay is not None:
            health: dict[str, Any] = self._relay.health()
            return health
        waiting, _ = self._unconfirmed()
        return relay_health(self._spool, self.topic, self.settings.stall_timeout_seconds,
                            unconfirmed=waiting)


def relay_health(spool: SpoolDirectory, topic: str, stall_timeout: float,
                 unconfirmed: int | None = None) -> dict[str, Any]:
    """The Kafka health an app reports: the relay's pid from its lock (never a dead one's),
    its figures from its status while it is the relay that wrote them, and otherwise what the
    journals hold (healthy only while nothing waits)."""
    view = Spool.of(spool)
    pid = lock_holder(spool, fmt.RELAY_LOCK)
    status = view.status()
    ours = pid is not None and status.get("pid") == pid and (
        time.time() - float(status.get("updated") or 0) < STALE_AFTER)
    if not ours:
        pending = view.pending()
        age = None if pending.oldest_created is None else max(
            0.0, time.time() - pending.oldest_created)
        figures: dict[str, Any] = {
            "spool_depth": pending.depth, "spool_pending_bytes": pending.bytes,
            "oldest_pending_age_seconds": age,
            "spool_rejected": status.get("spool_rejected"),
            "spool_shed": status.get("spool_shed"),
        }
        problem = ("the relay is starting" if pid is not None else
                   "no relay is running" if pending.depth else None)
        return {"transport": "kafka", "healthy": not pending.depth,
                "relay_running": pid is not None, "relay_pid": pid, "relay_port": None,
                "broker_reachable": None, "topic": topic, "spool_path": spool.path,
                **figures, "in_flight": None, "producer_rebuilds": None, "last_error": None,
                "last_error_at": None, "condition": None, "condition_detail": None,
                "problem": problem if pending.depth else None, "unconfirmed": unconfirmed,
                "guarantee": status.get("guarantee"), "relay_stats": None}
    age = status.get("oldest_pending_age_seconds")
    healthy = bool(status.get("healthy")) and not (
        age is not None and age > max(stall_timeout, 30.0))
    keys = ("relay_port", "broker_reachable", "spool_depth", "spool_pending_bytes",
            "spool_over_limit", "spool_shed", "spool_rejected", "oldest_pending_age_seconds",
            "in_flight", "producer_rebuilds", "last_error", "last_error_at", "condition",
            "condition_detail", "problem", "storage_fault", "guarantee")
    return {"transport": "kafka", "healthy": healthy, "relay_running": True, "relay_pid": pid,
            "topic": topic, "spool_path": spool.path, **{k: status.get(k) for k in keys},
            "unconfirmed": unconfirmed, "relay_stats": status.get("stats")}


class HostTrail:
    """The trail of delivered events, seen from an app: a replay reads the journals' trail
    (read-only, off the publish path) and journals copies in this process, as new records with
    the same event ids and the ``openalgo_replay: 1`` header, for the relay to send.

    >>> transport.spool.replay(user_id="alice", since=time.time() - 3600)  # doctest: +SKIP
    2
    """

    def __init__(self, transport: KafkaTransport) -> None:
        self.transport = transport

    def replay(self, *, user_id: str | None = None, since: float | None = None,
               until: float | None = None, event_types: Iterable[str] | None = None,
               dry_run: bool = False) -> int:
        """Journal again the delivered events of a user (or everyone) created in a window
        (unix seconds); how many match. Raises ``SpoolError`` as ``publish`` does."""
        view = Spool.of(self.transport._spool)
        count = 0
        for record in view.trail(since=since or 0.0, until=until, user_id=user_id,
                                 event_types=event_types or ()):
            count += 1
            if dry_run:
                continue
            meta = record.meta
            extra = [*(meta[fmt.EXTRA_HEADERS] or []), [REPLAY_HEADER, "1"]]
            self.transport._write([*meta[fmt.EVENT_ID:fmt.CREATED], time.time(),
                                   meta[fmt.TIMESTAMP], meta[fmt.SOURCE], extra], record.value)
        return count


__all__ = ["HostTrail", "KafkaTransport", "relay_health", "relay_running"]
