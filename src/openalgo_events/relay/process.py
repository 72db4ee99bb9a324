"""The relay: from every writer's journal to Kafka, outside the app. One log, one cursor.

One relay per spool (``relay.lock``). Its main thread blocks on the doorbell (and on the
producer's wake-up when delivery reports arrive), reads the journals from each writer's
position (``reader``), hands records to the producer (``producer``, whose own thread waits on
Kafka), moves each writer's acknowledged position as reports come back, and writes the ledger
once per batch (``ledger``). Nothing is copied on the way: the journals are the only store of
pending events, and memory holds only what is in flight. About once a second (``SAFETY_SCAN``)
it looks at every writer (a lost ring only delays), moves drained writers to the trail
(``trail``), resends rejected events marked for retry, and rewrites its status for health. A
small HTTP server on loopback answers ``/health`` and ``/metrics``.

SIGTERM or SIGINT: stop reading; deliver what is in flight for up to
``KAFKA_CLOSE_TIMEOUT_SECONDS`` (not at all when the brokers are known down: it stays in the
journals); write the ledger; exit. SIGUSR1: from now on, exit once idle (the keeper's parent,
gunicorn's master, is gone).

Started by a keeper for a publisher (``--exit-when-idle``), the relay exits once no writer is
alive and nothing is pending, pruning the trail on its way out. Exit status: 0 done, 3 another
relay holds the spool, 78 the spool or the settings cannot be used (the message says why and
what to do; the keeper waits longer before trying again), anything else a crash.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Any

from .._threads import new_event, start_thread
from ..catalog import Priority
from ..config import Settings
from ..envelope import cloudevents_headers
from ..errors import ConfigError, SpoolError
from ..spool import LedgerEntry, Spool, identity, open_directory
from ..spool import format as fmt
from ..spool.directory import SpoolDirectory, bind_doorbell, explain, posix_lock
from ..spool.rejected import RejectedStore
from ..stats import Stats
from . import trail
from .faults import StorageFaults
from .ledger import RecordWriter, ledger_positions
from .producer import Producer, _iso
from .reader import Entry, Reader, Writer

log = logging.getLogger("openalgo_events.relay")

EXIT_OK, EXIT_HELD, EXIT_UNUSABLE = 0, 3, 78
MAX_IN_FLIGHT = 10_000  # records handed to the producer and not yet reported
TXN_MAX = 5_000  # records in one transaction at most (exactly-once); fewer once caught up
READ_BATCH = 1_000  # records read from one writer per turn at most
LEDGER_EVERY = 0.05  # seconds between ledger writes while records are in flight
STATUS_EVERY = 1.0  # seconds between status writes when nothing changes
RECHECK_AFTER = 0.002  # seconds: a second read after a ring, for writes that skipped theirs
IDLE_EXIT_AFTER = 2.0  # seconds idle before a relay started for a publisher exits
FORGET_GONE_AFTER = 3600.0  # seconds a vanished writer's position is kept
ENV_PORT = "OPENALGO_EVENTS_RELAY_PORT"


class Relay:
    """The relay of one spool (``Settings.spool_location``).

    >>> Relay(Settings.from_env()).run()  # doctest: +SKIP
    0

    ``in_process`` runs it on a thread of the publishing process (an in-memory spool): no
    relay lock (nothing else can reach its temporary spool), no HTTP server, no signals.
    """

    def __init__(self, settings: Settings, *, exit_when_idle: bool = False,
                 wait_for_lock: bool = False, port: int | None = None, in_process: bool = False,
                 stats: Stats | None = None) -> None:
        self.settings = settings
        self.exit_when_idle = exit_when_idle
        self.wait_for_lock = wait_for_lock
        self.port = int(os.environ.get(ENV_PORT) or 0) if port is None else port
        self.in_process = in_process
        self.stats = stats or Stats()
        self.stop = new_event()
        # Set by a signal handler, which must take no lock (Event.set does: a second SIGTERM
        # arriving inside the first handler's set() would deadlock the relay).
        self._signalled = False
        self.faults = StorageFaults()
        self.spool: SpoolDirectory | None = None
        self.reader: Reader | None = None
        self.producer: Producer | None = None
        self._lock_fd = -1
        self._ledger: RecordWriter | None = None
        self._status: RecordWriter | None = None
        self._rejected: RejectedStore | None = None
        self._bell: Any = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._tokens: dict[int, tuple[Writer | None, Any]] = {}
        self._generation = 0
        self._suspects: set[tuple[str, int]] = set()
        self._retrying: set[int] = set()  # rejected rows in flight again
        # refused records not yet written to the rejected store (it failed): tried again
        self._unsettled: list[tuple[Writer, Entry, str]] = []
        self._rejected_total: int | None = None
        self._corrupt_counted = 0  # bad frames already counted in ``stats`` (quarantined)
        self._rung: set[str] = set()
        self._recheck_at: float | None = None
        self._moved = False  # acknowledged positions moved since the last ledger write
        # exactly-once: the positions read from Kafka last merged (before any send)
        self._remote_merged: dict[str, list[int]] | None = None
        self._committed: dict[str, list[int]] = {}  # exactly-once: positions in Kafka
        self._tombstones: set[str] = set()  # exactly-once: retired journals to delete there
        self._last_ledger = 0.0
        self._next_scan = 0.0
        self._next_prune = 0.0
        self.last_status: dict[str, Any] = {}
        self._status_due = 0.0
        self._status_checked = -LEDGER_EVERY  # when the figures were last gathered
        self._status_look_at: float | None = None  # a look skipped, made up then
        self._idle_since: float | None = None
        # depth, bytes, oldest created: from the last look
        self._pending: tuple[int, int, float | None] = (0, 0, None)
        self._started = time.time()
        self._started_iso = _iso(self._started)
        self.exit_code = EXIT_OK

    # -- start and stop -------------------------------------------------------------------------
    def run(self) -> int:
        """Relay until stopped (or idle, with ``exit_when_idle``); the exit status."""
        try:
            held = self._open()
        except (SpoolError, ConfigError, OSError) as exc:
            where = self.settings.spool_location
            reason = explain(exc, where) if isinstance(exc, OSError) else str(exc)
            log.error("relay: cannot use spool %s: %s", where, reason)
            self._close_files()
            return EXIT_UNUSABLE
        if not held:
            self._close_files()
            return self.exit_code
        try:
            self._loop()
        finally:
            self._shutdown()
        return EXIT_OK

    def start_thread(self) -> Relay:
        """Run in this process, on a real thread (an in-memory spool's relay)."""
        self._thread = start_thread(lambda: setattr(self, "exit_code", self.run()),
                                    "openalgo-events-relay")
        return self

    def stop_and_join(self, timeout: float) -> None:
        self.stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout + 5.0)

    def _open(self) -> bool:
        """Everything the relay needs, or an exception saying what is wrong; False when another
        relay holds the spool."""
        self.spool = open_directory(self.settings)
        identity.claim(self.spool, self.settings.bootstrap_servers,
                       self.settings.order_events_topic)
        if not self.in_process:
            if not self._take_lock():
                return False
            from ..spool.v1 import import_legacy_default

            import_legacy_default(self.settings)
        sync = self.settings.spool_sync == "FULL"
        self._ledger = RecordWriter(self.spool, fmt.LEDGER, self.faults, sync=sync)
        self._status = RecordWriter(self.spool, fmt.STATUS, self.faults)
        self._rejected = RejectedStore(self.spool)
        self.reader = Reader(self.spool, ledger_positions(self._ledger.read()))
        try:
            self._bell = bind_doorbell(self.spool)
        except OSError as exc:
            log.warning("relay: no doorbell (%s); reading the journals every %s s", exc,
                        fmt.SAFETY_SCAN)
        transactional_id = positions = None
        if self.settings.delivery_guarantee == "exactly_once":
            from .positions import Positions

            spool_id = identity.spool_id(self.spool)
            transactional_id = f"openalgo-events-{spool_id}"
            positions = Positions(self.settings.relay_positions_topic, spool_id)
        self.producer = Producer(self.settings.producer_config(),
                                 self.settings.order_events_topic, self.stats, wake=self._wake,
                                 stall_timeout=self.settings.stall_timeout_seconds,
                                 transactional_id=transactional_id, positions=positions)
        if not self.in_process:
            from .http import serve

            self._server = serve(self)
        pending = Spool.of(self.spool).pending(ledger_positions(self._ledger.read()))
        log.info("relay for spool %s running (pid %s, port %s, %s pending)", self.spool.path,
                 os.getpid(), self.port, pending.depth)
        return True

    def _take_lock(self) -> bool:
        assert self.spool is not None
        self._lock_fd = self.spool.open(fmt.RELAY_LOCK, os.O_RDWR, create=True)
        while not posix_lock(self._lock_fd):
            holder = Spool.of(self.spool).relay_pid()
            if not self.wait_for_lock:
                if self.exit_when_idle:
                    log.info("relay: another relay (pid %s) holds spool %s; exiting", holder,
                             self.spool.path)
                    self.exit_code = EXIT_OK
                else:
                    log.error("relay: another relay (pid %s) already holds spool %s; this one "
                              "exits. Stop that one first, or run this one with "
                              "--wait-for-lock to take over when it stops", holder,
                              self.spool.path)
                    self.exit_code = EXIT_HELD
                return False
            if self.stop.wait(0.2) or self._signalled:
                return False
        return True

    def install_signals(self) -> None:
        def on_stop(_signum: int, _frame: Any) -> None:
            self._signalled = True
            self._wake()

        def on_orphaned(_signum: int, _frame: Any) -> None:
            if not self.exit_when_idle:
                log.warning("relay: its supervisor is gone; exiting once nothing is pending")
            self.exit_when_idle = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGUSR1, on_orphaned)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\1")

    # -- the loop -------------------------------------------------------------------------------
    def _loop(self) -> None:
        assert self.reader is not None
        now = time.monotonic()
        self._housekeeping(now)
        self._prune()
        while not (self.stop.is_set() or self._signalled):
            self._wait(self._timeout(time.monotonic()))
            now = time.monotonic()
            self._collect(now)
            self._take_remote_positions()
            self._send(now)
            self._commit()
            if now >= self._next_scan:
                self._housekeeping(now)
            self._write_ledger(now)
            self._write_status(now)
            if self._idle(now):
                self._prune()
                break
        self._collect(time.monotonic())

    def _timeout(self, now: float) -> float:
        deadline = self._next_scan
        if self._moved:
            deadline = min(deadline, self._last_ledger + LEDGER_EVERY)
        if self._recheck_at is not None:
            deadline = min(deadline, self._recheck_at)
        if self._status_look_at is not None:
            deadline = min(deadline, self._status_look_at)
        return max(0.0, deadline - now)

    def _wait(self, timeout: float) -> None:
        sources = [self._wake_r] + ([self._bell] if self._bell is not None else [])
        try:
            ready, _, _ = select.select(sources, [], [], timeout)
        except InterruptedError:
            return
        if self._wake_r in ready:
            with contextlib.suppress(OSError):
                while os.read(self._wake_r, 4096):
                    pass
        if self._bell is not None and self._bell in ready:
            self._bell.setblocking(False)
            with contextlib.suppress(OSError):
                while True:
                    self._rung.add(self._bell.recv(256).decode(errors="replace"))
            self._recheck_at = time.monotonic() + RECHECK_AFTER

    # -- delivery reports -----------------------------------------------------------------------
    def _collect(self, now: float) -> None:
        producer, reader = self.producer, self.reader
        assert producer is not None and reader is not None
        delivered, refused = producer.results()
        if delivered:
            wall = time.time()
            latencies = []
            stats = self.stats
            for token in delivered:
                item = self._tokens.pop(token, None)
                if item is None:
                    continue
                writer, entry = item
                if writer is None:  # a rejected event retried
                    self._retry_delivered(entry)
                    continue
                meta = entry.meta
                stats.add(Stats.event_key("delivered", meta[fmt.EVENT_TYPE], "kafka"))
                latencies.append(wall - meta[fmt.CREATED])
                reader.done(writer, entry)
            stats.observe_all(Stats.key("delivery_latency"), latencies)
            self._moved = True
        for token, reason, alone in refused:
            item = self._tokens.pop(token, None)
            if item is None:
                continue
            writer, entry = item
            if writer is None:
                self._retry_refused(entry, reason)
            elif alone:
                self._set_aside(writer, entry, reason)
            else:
                self._suspects.add((writer.name, entry.seq))  # resent alone after the rebuild
        if producer.generation != self._generation:
            self._generation = producer.generation
            self._tokens.clear()
            self._retrying.clear()
            reader.rewind()
        if self._suspects and producer.isolating and all(
                self._settled(name, seq) for name, seq in self._suspects):
            self._suspects.clear()
            producer.end_isolation()

    # -- exactly-once ---------------------------------------------------------------------------
    def _take_remote_positions(self) -> None:
        """Before anything is sent on a new transactional client (at start, and after each
        rebuild): the positions Kafka holds for this spool's journals, where they are ahead of
        the ledger (a crash between a commit and the ledger write, or a commit that timed out
        and yet completed)."""
        producer, reader = self.producer, self.reader
        assert producer is not None and reader is not None
        remote = producer.remote_positions
        if remote is None or remote is self._remote_merged:
            return
        self._remote_merged = remote
        self._committed = {name: list(entry) for name, entry in remote.items()}
        reader.scan(time.monotonic())
        reader.rewind()  # nothing of the old client's is in flight any more
        reader.merge(remote)
        self._moved = True

    def _commit(self, timeout: float | None = None) -> None:
        """Exactly-once: commit the open transaction, with every journal's position that it
        moves, once the journals are read to their end (or it is full)."""
        producer, reader = self.producer, self.reader
        assert producer is not None and reader is not None
        if not producer.transactional or self._remote_merged is None:
            return
        if not self._tombstones and not producer.in_flight:
            return
        if producer.in_flight < TXN_MAX and not producer.wants_commit and not all(
                w.caught_up for w in reader.writers.values()):
            return  # more to read into this transaction
        positions: dict[str, list[int] | None] = {}
        for name, writer in reader.writers.items():
            projected = reader.projected(writer)
            if self._committed.get(name) != projected:
                positions[name] = projected
        for name in self._tombstones:
            positions[name] = None
        if producer.commit(positions, timeout):
            for name, position in positions.items():
                if position is None:
                    self._committed.pop(name, None)
                    self._tombstones.discard(name)
                else:
                    self._committed[name] = position
        if producer.fenced:
            self._signalled = True  # another relay of this spool runs: stop
        self._collect(time.monotonic())

    def _settled(self, name: str, seq: int) -> bool:
        assert self.reader is not None
        writer = self.reader.writers.get(name)
        return writer is None or seq <= writer.acked_seq or seq in writer.done_above

    def _set_aside(self, writer: Writer, entry: Entry, reason: str) -> None:
        """Kafka refused this record for good: into ``rejected.db`` with its reason, and the
        records after it flow. Until that write succeeds, it stays pending (retried)."""
        assert self._rejected is not None and self.reader is not None
        meta = entry.meta
        value = self._value_of(writer, entry)
        if not self.faults.due("rejected store"):
            self._unsettled.append((writer, entry, reason))
            return
        try:
            self._rejected.add(meta, value if value is not None else b"", reason)
        except Exception as exc:  # sqlite3.Error: a full disk, a read-only file
            self.faults.failed("rejected store", self._rejected.path, exc)
            self._unsettled.append((writer, entry, reason))  # pending until it can be written
            return
        self.faults.ok("rejected store")
        self._rejected_total = (self._rejected_total or 0) + 1
        writer.rejected += 1
        self.stats.incr("rejected", event_type=meta[fmt.EVENT_TYPE], transport="kafka")
        log.error("Kafka refused %s event %s for good: %s. It is set aside as rejected and the "
                  "events after it are sent; fix the cause, then run 'openalgo-events spool "
                  "retry %s'", meta[fmt.EVENT_TYPE], meta[fmt.EVENT_ID], reason,
                  meta[fmt.EVENT_ID])
        self.reader.done(writer, entry)
        self._moved = True

    def _value_of(self, writer: Writer, entry: Entry) -> bytes | None:
        """A record's value, read back from its journal (values are not kept in memory)."""
        if writer.directory is None:
            return None
        try:
            fd = writer.directory.open(fmt.segment_name(entry.segment), os.O_RDONLY)
        except (OSError, SpoolError):
            return None
        try:
            found = fmt.frame_at(os.pread(fd, entry.end - entry.start, entry.start), 0)
        except fmt.BadFrame:
            return None
        finally:
            os.close(fd)
        return None if found is None else fmt.decode(found[1])[1]

    # -- sending --------------------------------------------------------------------------------
    def _send(self, now: float) -> None:
        producer, reader = self.producer, self.reader
        assert producer is not None and reader is not None
        if not producer.accepting:
            return
        self._take_remote_positions()  # once accepting: read with the client they go with
        room = MAX_IN_FLIGHT - producer.in_flight
        shedding = self._pending[1] > self.settings.spool_max_bytes
        rung, self._rung = self._rung, set()
        if not rung <= reader.writers.keys() and any(n[:1].isdigit() for n in rung):
            reader.scan(now)  # a writer's first ring: it is new
        recheck = self._recheck_at is not None and now >= self._recheck_at
        for writer in reader.writers.values():
            if room <= 0:
                break
            if writer.caught_up and writer.name not in rung and not recheck:
                continue
            records = reader.read(writer, min(room, READ_BATCH), now)
            for entry, value in records:
                meta = entry.meta
                if shedding and meta[fmt.PRIORITY] < Priority.HIGH:
                    self._shed(writer, entry)
                    continue
                headers = cloudevents_headers(meta[fmt.EVENT_ID], meta[fmt.EVENT_TYPE],
                                              meta[fmt.SOURCE], meta[fmt.TIMESTAMP])
                extra = meta[fmt.EXTRA_HEADERS]
                if extra:
                    headers += [(str(k), str(v).encode()) for k, v in extra]
                token = producer.send(meta[fmt.USER_ID].encode(), value, headers,
                                      int(meta[fmt.CREATED] * 1000))
                if token is None:
                    reader.unread(writer, entry)
                    room = 0
                    break
                if isinstance(token, str):
                    self._set_aside(writer, entry, token)
                    continue
                self._tokens[token] = (writer, entry)
                room -= 1
        if recheck:
            self._recheck_at = None

    def _shed(self, writer: Writer, entry: Entry) -> None:
        assert self.reader is not None
        meta = entry.meta
        writer.shed += 1
        self.stats.incr("shed", event_type=meta[fmt.EVENT_TYPE])
        log.warning("spool over its limit of %s bytes: shed %s event %s (priority %s)",
                    self.settings.spool_max_bytes, meta[fmt.EVENT_TYPE], meta[fmt.EVENT_ID],
                    Priority(meta[fmt.PRIORITY]).name)
        self.reader.done(writer, entry)
        self._moved = True

    # -- rejected events marked for retry ------------------------------------------------------
    def _send_retries(self) -> None:
        producer, store = self.producer, self._rejected
        assert producer is not None and store is not None
        if not producer.accepting or not self.faults.due("rejected store"):
            return
        try:
            marked = store.marked_for_retry()
        except Exception as exc:
            self.faults.failed("rejected store", store.path, exc)
            return
        for record in marked:
            if record.id in self._retrying:
                continue
            meta = record.meta
            headers = cloudevents_headers(meta[fmt.EVENT_ID], meta[fmt.EVENT_TYPE],
                                          meta[fmt.SOURCE], meta[fmt.TIMESTAMP])
            headers += [(str(k), str(v).encode()) for k, v in meta[fmt.EXTRA_HEADERS] or []]
            token = producer.send(meta[fmt.USER_ID].encode(), record.value, headers,
                                  int(time.time() * 1000))
            if token is None:
                return
            if isinstance(token, str):
                self._retry_refused(record, token)
                continue
            self._retrying.add(record.id)
            self._tokens[token] = (None, record)
            log.warning("rejected event %s sent again (spool retry)", meta[fmt.EVENT_ID])

    def _retry_delivered(self, record: Any) -> None:
        assert self._rejected is not None
        self._retrying.discard(record.id)
        with contextlib.suppress(Exception):
            self._rejected.delivered(record.id)
        self.stats.incr("delivered", event_type=record.meta[fmt.EVENT_TYPE], transport="kafka")
        log.warning("rejected event %s delivered on retry", record.meta[fmt.EVENT_ID])

    def _retry_refused(self, record: Any, reason: str) -> None:
        assert self._rejected is not None
        self._retrying.discard(record.id)
        with contextlib.suppress(Exception):
            self._rejected.refused_again(record.id, reason)
        log.error("rejected event %s refused again: %s", record.meta[fmt.EVENT_ID], reason)

    # -- housekeeping ---------------------------------------------------------------------------
    def _housekeeping(self, now: float) -> None:
        """About once a second: every writer looked at, gaps settled, drained writers retired,
        retries sent, the lock and the spool checked, the pending figures taken."""
        reader, spool = self.reader, self.spool
        assert reader is not None and spool is not None
        self._next_scan = now + fmt.SAFETY_SCAN
        reader.scan(now)
        for writer in reader.writers.values():
            writer.caught_up = False  # read every writer now: a lost ring only delays
        self._send(now)
        reader.settle_gaps(now)
        for name in reader.forget_gone(now, FORGET_GONE_AFTER):
            self._moved = True
            if self.producer is not None and self.producer.transactional:
                self._tombstones.add(name)
            log.info("relay: forgot writer %s (its directory gone for an hour)", name)
        for writer in [w for w in reader.writers.values() if reader.drained(w)]:
            self._retire(writer)
        unsettled, self._unsettled = self._unsettled, []
        for writer, entry, reason in unsettled:
            self._set_aside(writer, entry, reason)
        self._send_retries()
        self._rejected_total = self._rejected_count()
        self._pending = self._measure_pending()
        if spool.gone():
            log.error("relay: its spool directory %s was deleted; nothing is left to send, so "
                      "it stops", spool.path)
            self.stop.set()
        elif not self.in_process and not self._still_ours():
            self.stop.set()
        if time.time() >= self._next_prune:
            self._prune()

    def _retire(self, writer: Writer) -> None:
        assert self.reader is not None and self.spool is not None
        if not self.faults.due("trail"):
            return
        try:
            trail.retire(self.spool, writer.name, writer.acked_segment, writer.acked_offset)
        except (OSError, SpoolError) as exc:
            self.faults.failed("trail", os.path.join(self.spool.path, fmt.TRAIL), exc)
            return
        self.faults.ok("trail")
        writer.close()
        del self.reader.writers[writer.name]
        self._moved = True
        if self.producer is not None and self.producer.transactional:
            self._tombstones.add(writer.name)
        log.info("relay: writer %s is gone and its journal delivered; moved to the trail",
                 writer.name)

    def _prune(self) -> None:
        assert self.reader is not None and self.spool is not None
        self._next_prune = time.time() + trail.PRUNE_EVERY
        if not self.faults.due("trail"):
            return
        positions = {name: LedgerEntry(*pos) for name, pos in self.reader.positions().items()}
        try:
            trail.prune(self.spool, positions, self.settings.trail_retention_hours * 3600,
                        self.settings.trail_max_bytes)
        except OSError as exc:
            self.faults.failed("trail", os.path.join(self.spool.path, fmt.TRAIL), exc)

    def _measure_pending(self, scan: bool = True) -> tuple[int, int, float | None]:
        """(records, bytes, oldest created) not yet acknowledged: from memory while every writer
        is read to its end (what is in flight), else from the journals (a backlog: read only
        with ``scan``, about once a second; the last figures otherwise)."""
        assert self.reader is not None and self.spool is not None
        writers = [w for w in self.reader.writers.values() if w.gone_since is None]
        if any(not w.caught_up for w in writers):
            if not scan:
                return self._pending
            pending = Spool.of(self.spool).pending(
                {w.name: LedgerEntry(*w.position()) for w in writers})
            return pending.depth, pending.bytes, pending.oldest_created
        depth = size = 0
        oldest: float | None = None
        for writer in writers:
            depth += len(writer.sending)
            if writer.segment == writer.acked_segment:
                size += max(0, writer.offset - writer.acked_offset)
            else:  # read into a later segment (a new writer's acknowledged segment is 0)
                size += sum(entry.end - entry.start for entry in writer.window)
            first = next((e for e in writer.window if not e.done and e.meta), None)
            if first is not None:
                created = float(first.meta[fmt.CREATED])
                oldest = created if oldest is None else min(oldest, created)
        return depth, size, oldest

    def _still_ours(self) -> bool:
        """Whether the relay lock at the spool's path is still the one this relay holds.
        Deleted (a cleaner, an operator), it is made and taken again at once; taken by another
        relay first, the path is that one's: this relay stops, so two never serve one spool."""
        assert self.spool is not None
        held = os.fstat(self._lock_fd)
        try:
            named = os.stat(fmt.RELAY_LOCK, dir_fd=self.spool.fd, follow_symlinks=False)
            if (named.st_ino, named.st_dev) == (held.st_ino, held.st_dev):
                return True
        except FileNotFoundError:
            pass
        try:
            fd = self.spool.open(fmt.RELAY_LOCK, os.O_RDWR, create=True)
        except (OSError, SpoolError) as exc:
            self.faults.failed("lock", os.path.join(self.spool.path, fmt.RELAY_LOCK), exc)
            return True
        if posix_lock(fd):
            os.close(self._lock_fd)  # the old file's: deleted, no one else's
            self._lock_fd = fd
            log.error("relay: its lock file %s was deleted or replaced; it is taken again",
                      os.path.join(self.spool.path, fmt.RELAY_LOCK))
            return True
        os.close(fd)
        log.error("relay: %s was deleted or replaced under the running relay and another "
                  "process holds it now; stopping (that process serves the spool)",
                  os.path.join(self.spool.path, fmt.RELAY_LOCK))
        return False

    def _idle(self, now: float) -> bool:
        """With ``exit_when_idle``: whether to exit (no writer alive, nothing pending or in
        flight, no retry waiting, for ``IDLE_EXIT_AFTER``). Pending events keep it running
        whatever the broker's state: it is the one that can deliver them."""
        if not self.exit_when_idle:
            return False
        reader, producer = self.reader, self.producer
        assert reader is not None and producer is not None
        busy = (any(w.live or w.window or not w.caught_up for w in reader.writers.values()
                    if w.gone_since is None)
                or producer.in_flight or self._retrying or self._pending[0])
        if busy:
            self._idle_since = None
            return False
        if self._idle_since is None:
            self._idle_since = now
        return now - self._idle_since >= IDLE_EXIT_AFTER

    # -- records of progress --------------------------------------------------------------------
    def _write_ledger(self, now: float, force: bool = False) -> None:
        assert self._ledger is not None and self.reader is not None and self.producer is not None
        if not self._moved:
            return
        if not force and self.producer.in_flight and now - self._last_ledger < LEDGER_EVERY:
            return
        self._last_ledger = now
        if self._ledger.write({"writers": self.reader.positions()}):
            self._moved = False

    def status(self, stats: bool = True) -> dict[str, Any]:
        """The figures hosts read (the ``status`` file) and ``/health`` shows; ``stats=False``
        leaves out the counters and histograms (the costly part), to see whether a figure
        changed."""
        producer, reader = self.producer, self.reader
        assert producer is not None and reader is not None
        depth, size, oldest = self._pending
        age = None if oldest is None else max(0.0, time.time() - oldest)
        state = producer.delivery_state()
        fault = self.faults.describe()
        healthy = bool(state.pop("delivering")) and fault is None and not (
            age is not None and age > max(self.settings.stall_timeout_seconds, 30.0))
        return {
            "version": fmt.VERSION,
            "running": True,
            "pid": os.getpid(),
            "port": self.port,
            "relay_port": self.port,
            "started": self._started_iso,
            "updated": time.time(),
            "healthy": healthy,
            "topic": self.settings.order_events_topic,
            "guarantee": producer.guarantee,
            "spool_depth": depth,
            "spool_pending_bytes": size,
            "spool_over_limit": size > self.settings.spool_max_bytes,
            "spool_shed": sum(w.shed for w in reader.writers.values()),
            "spool_rejected": self._rejected_total,
            "oldest_pending_age_seconds": age,
            "journal_corrupt_frames": reader.corrupt,
            "journal_lost_records": reader.lost,
            "storage_fault": fault,
            "writers": len(reader.writers),
            **state,
            "stats": self.stats.export() if stats else None,
        }

    def _rejected_count(self) -> int | None:
        assert self._rejected is not None
        try:
            return self._rejected.count()
        except Exception:
            return None

    def _write_status(self, now: float) -> None:
        """Rewrite the status when a figure changed and at least every ``STATUS_EVERY`` seconds
        (hosts read its age). The figures are looked at no more often than every
        ``LEDGER_EVERY`` (a busy relay turns for every ring and every delivery report); a look
        skipped is made up at the end of that interval, so that health shows a change (the
        broker lost, a delivery failed) within ``LEDGER_EVERY``. The pending count and bytes
        change with every event: they are written with the rest, not on their own."""
        assert self._status is not None and self.reader is not None
        if now < self._status_due and now - self._status_checked < LEDGER_EVERY:
            self._status_look_at = self._status_checked + LEDGER_EVERY
            return
        self._status_look_at = None
        self._status_checked = now
        if self.reader.corrupt > self._corrupt_counted:
            self.stats.incr("quarantined", self.reader.corrupt - self._corrupt_counted)
            self._corrupt_counted = self.reader.corrupt
        self._pending = self._measure_pending(scan=False)
        doc = self.status(stats=False)
        volatile = ("updated", "oldest_pending_age_seconds", "stats", "in_flight",
                    "spool_depth", "spool_pending_bytes")
        changed = {k: v for k, v in doc.items() if k not in volatile} != {
            k: v for k, v in self.last_status.items() if k not in volatile}
        if not changed and now < self._status_due:
            return
        doc["stats"] = self.stats.export()
        self.last_status = doc
        self._status_due = now + STATUS_EVERY
        self._status.write(doc)

    def health(self) -> dict[str, Any]:
        """An in-process relay's health, as an app reports it (``transports.kafka``): the last
        status, with the producer's state read now (a condition shows at once)."""
        doc = dict(self.last_status or {"healthy": False})
        if self.producer is not None:
            state = self.producer.delivery_state()
            age = doc.get("oldest_pending_age_seconds")
            doc.update(state, healthy=bool(state.pop("delivering")) and not self.faults and not (
                age is not None and age > max(self.settings.stall_timeout_seconds, 30.0)))
        keys = ("broker_reachable", "spool_depth", "spool_pending_bytes", "spool_over_limit",
                "spool_shed", "spool_rejected", "oldest_pending_age_seconds", "in_flight",
                "producer_rebuilds", "last_error", "last_error_at", "condition",
                "condition_detail", "problem", "storage_fault", "guarantee")
        return {"transport": "kafka", "healthy": bool(doc.get("healthy")),
                "relay_running": self._thread is not None and self._thread.is_alive(),
                "relay_pid": os.getpid(), "relay_port": None,
                "topic": self.settings.order_events_topic,
                "spool_path": self.settings.spool_location, **{k: doc.get(k) for k in keys},
                "unconfirmed": doc.get("spool_depth"), "relay_stats": None}

    def pending_count(self) -> int:
        return int(self._pending[0])

    # -- shutdown -------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self.producer is not None:
            hopeless = self.producer.broker_up is False or bool(self.producer.condition)
            if self.producer.transactional and self.producer.in_flight and not hopeless:
                self._commit(timeout=self.settings.close_timeout_seconds)  # what is in flight
            self.producer.close(self.settings.close_timeout_seconds)
            self._collect(time.monotonic())
        if self.reader is not None and self._ledger is not None:
            self._moved = True
            self._write_ledger(time.monotonic(), force=True)
            self._pending = self._measure_pending()
            if self._status is not None:
                self._status.write({**self.status(), "running": False})
            log.info("relay for spool %s stopped; %s events pending for the next relay",
                     self.settings.spool_location, self._pending[0])
        self._close_files()

    def _close_files(self) -> None:
        if self.reader is not None:
            self.reader.close()
        for closable in (self._ledger, self._status, self._rejected):
            if closable is not None:
                closable.close()
        if self._bell is not None:
            self._bell.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1
        # the relay lock goes with the process (or with this descriptor, in process)
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = -1
        if self.spool is not None:
            self.spool.close()
