"""The relay process: from the writers' journals to SQLite to Kafka, outside the host.

One relay per spool (the flock on ``<spool>.lock``, taken by ``Spool``). Its main thread waits on
the doorbell (or ``SCAN_EVERY``), reads every writer's journal from its cursor and commits the
records with the cursors in one SQLite transaction (``Spool.adopt``), then deletes the segments
the cursors have passed and the directories of dead writers once drained. Kafka is
``KafkaTransport``'s relay thread, unchanged: the producer, delivery reports, recovery by
rebuilding the producer, the trail's retention. A small HTTP server on loopback answers
``/health`` and ``/metrics``; ``<spool>.status.json`` (``spooldir``) carries the same figures to
hosts, plus each writer's confirmed sequence number, which their ``flush`` waits on.

SIGTERM or SIGINT: stop reading journals, drain to Kafka for up to ``KAFKA_CLOSE_TIMEOUT_SECONDS``
(``KafkaTransport.close`` stops its thread before the spool is closed), then exit. What is not
delivered stays in SQLite or the journals for the next relay.

Started detached by a publisher (``--exit-when-idle``), the relay exits once no writer is left
and nothing is pending; if a writer appears while it exits, it starts its successor.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import shutil
import signal
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from .. import spooldir
from ..config import Settings
from ..envelope import cloudevents_headers
from ..errors import ConfigError, SpoolError
from ..spool import Spool, record_headers
from ..stats import Stats

log = logging.getLogger("openalgo_events.relay")

READ_BATCH = 1000  # records read per turn at most (then produced, before reading on)
CORRUPT_AFTER = 2.0  # seconds a bad frame of a live writer may stay "being written"
IDLE_EXIT_AFTER = 2.0  # seconds with no writer and nothing pending before an idle exit
# Seconds a relay started by a publisher stays with no writer left while events stay pending
# (the broker down): then it exits, and the spool waits for the next publisher's relay.
GIVE_UP_AFTER = 60.0
STATUS_COMPUTE_EVERY = 0.005  # seconds; a flush waits on the status file
LOCK_CHECK_EVERY = 0.2  # seconds between checks that the lock file at the path is ours
CLAIM_FOR = 1.0  # seconds to retry the relay lock (a host's liveness probe holds it briefly)


@dataclass
class Writer:
    """What the relay knows of one writer's journal."""

    name: str
    path: str
    segment: int
    offset: int
    seq: int  # the writer's last sequence number read (and committed once ``adopt`` returns)
    delivered: int = 0  # every record up to this writer seq is delivered
    marks: deque[tuple[int, int]] = field(default_factory=deque)  # (spool seq, writer seq)
    bad_since: float | None = None
    corrupt: int = 0
    deleted_below: int = 0  # segments before this one are deleted

    def cursor(self) -> str:
        return json.dumps([self.segment, self.offset, self.seq])


class Relay:
    """The relay of one spool.

    >>> Relay(Settings.from_env()).run()  # doctest: +SKIP
    0
    """

    def __init__(self, settings: Settings, *, exit_when_idle: bool = False,
                 wait_for_lock: bool = False, port: int = 0,
                 exit_with_parent: bool = False) -> None:
        self.settings = settings
        self.exit_with_parent = exit_with_parent  # a supervised relay orphaned by a kill -9
        self._parent = os.getppid()
        self.spool_path = os.path.abspath(settings.spool_path)
        self.exit_when_idle = exit_when_idle
        self.wait_for_lock = wait_for_lock
        self.port = port
        self.stats = Stats()
        self.stop = threading.Event()
        self.writers: dict[str, Writer] = {}
        self.spool: Spool | None = None
        self.transport: Any = None
        self._server: ThreadingHTTPServer | None = None
        self._bell: socket.socket | None = None
        self._status_due = self._compute_due = self._next_lock_check = 0.0
        self._last_status: dict[str, Any] = {}
        self._idle_since: float | None = None
        self._status_failed = False
        self._lost_lock = False  # the status file is then the other relay's

    # -- start and stop -----------------------------------------------------------------------
    def run(self) -> int:
        """Relay until stopped (or idle, with ``exit_when_idle``); the process's exit code."""
        if self.settings.spool_path == ":memory:":
            raise ConfigError(["KAFKA_SPOOL_PATH=:memory: keeps the relay inside the publishing "
                               "process; a relay process needs a spool file path"])
        spooldir.Identity(self.settings.bootstrap_servers,
                          self.settings.order_events_topic).claim(self.spool_path)
        self.spool = self._claim()
        if self.spool is None:
            log.info("another relay holds spool %s; exiting", self.spool_path)
            return 0
        from ..transports.kafka import KafkaTransport

        try:
            self.transport = KafkaTransport(
                self.settings.producer_config(), self.settings.order_events_topic,
                spool=self.spool, stall_timeout=self.settings.stall_timeout_seconds,
                stats=self.stats)
        except BaseException:
            self.spool.close()
            raise
        self._bind_doorbell()
        self._serve_http()
        self._load_cursors()
        log.info("relay for spool %s running (pid %s, port %s, %s pending)", self.spool_path,
                 os.getpid(), self.port, self.spool.depth)
        try:
            busy = False
            while not self.stop.is_set():
                if not busy:  # after a read that found records, read again at once
                    self._wait_for_bell()
                try:
                    busy = self._intake()
                except Exception:
                    busy = False
                    log.exception("relay: reading the journals failed; retrying")
                    self._load_cursors()
                    self.stop.wait(0.5)
                self._write_status()
                if not self._still_ours():
                    self._lost_lock = True
                    self.stop.set()  # no successor either: the other process serves the spool
                    break
                if self.exit_with_parent and not self.exit_when_idle and os.getppid() != (
                        self._parent):
                    log.warning("relay: its supervisor (pid %s) is gone; exiting once the "
                                "journals are drained and nothing is pending", self._parent)
                    self.exit_when_idle = True
                if self._idle():
                    break
        finally:
            self._shutdown()
        if self.exit_when_idle and not self.stop.is_set() and self._writer_names():
            # A writer came while we were exiting, after its own check saw us: start the next.
            from ..transports.relayed import start_detached

            start_detached(self.settings, self.spool_path)
        return 0

    def _claim(self) -> Spool | None:
        deadline = time.monotonic() + CLAIM_FOR
        while True:
            try:
                return Spool.for_settings(self.settings, self.stats, self.spool_path)
            except SpoolError as exc:
                if "in use" not in str(exc):
                    raise
            if self.stop.is_set() or (not self.wait_for_lock and time.monotonic() > deadline):
                return None
            self.stop.wait(0.1)

    def _still_ours(self) -> bool:
        """Whether this relay still holds the lock file at the spool's path. Deleted (a tmp
        cleaner, an operator), it is taken again at once, as at every commit (``Spool.
        keep_lock``): the relay carries on and a host's check still finds it running. Taken
        by another process first (a relay a host started meanwhile), the path is that one's:
        this relay stops, so that two relays never serve one spool path (its pending events
        stay in SQLite and the journals for the other)."""
        now = time.monotonic()
        if now < self._next_lock_check:
            return True
        self._next_lock_check = now + LOCK_CHECK_EVERY
        assert self.spool is not None
        if self.spool.keep_lock():
            return True
        log.error("relay: %s was deleted or replaced under the running relay and another "
                  "process holds it now; stopping (that process serves the spool)",
                  spooldir.relay_lock_path(self.spool_path))
        return False

    def _shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._bell is not None:
            self._bell.close()
        if self.transport is not None:
            left = self.transport.close(self.settings.close_timeout_seconds)
            log.info("relay for spool %s stopped; %s events pending for the next relay",
                     self.spool_path, left)
        if self._lost_lock:
            return
        with contextlib.suppress(OSError):
            spooldir.write_json(spooldir.status_path(self.spool_path),
                                {**self._last_status, "running": False, "updated": time.time()})

    def install_signals(self) -> None:
        def on_signal(_signum: int, _frame: Any) -> None:
            self.stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def _bind_doorbell(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(spooldir.doorbell_address(self.spool_path))
        except OSError as exc:
            sock.close()
            log.warning("relay: no doorbell (%s); reading the journals every %s s", exc,
                        spooldir.SCAN_EVERY)
            return
        self._bell = sock

    def _wait_for_bell(self) -> None:
        # While events are on their way, turn often: the status file (what flush waits on)
        # follows the delivery reports within milliseconds.
        moving = bool(self.transport._in_flight) or bool(self.spool and self.spool.queued)
        timeout = 0.005 if moving else spooldir.SCAN_EVERY
        if self._bell is None:
            self.stop.wait(timeout)
            return
        self._bell.settimeout(timeout)
        with contextlib.suppress(OSError):
            self._bell.recv(64)
            self._bell.setblocking(False)
            with contextlib.suppress(OSError):
                while self._bell.recv(64):  # one scan serves every ring so far
                    pass

    # -- the journals -------------------------------------------------------------------------
    def _writer_names(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(spooldir.writers_dir(self.spool_path))
                          if not n.startswith("."))
        except FileNotFoundError:
            return []

    def _load_cursors(self) -> None:
        """Reading positions from the committed cursors (at start, and after a failed commit)."""
        assert self.spool is not None
        committed = self.spool.cursors()
        self.writers.clear()
        for name, text in committed.items():
            segment, offset, seq = json.loads(text)
            path = os.path.join(spooldir.writers_dir(self.spool_path), name)
            if not os.path.isdir(path):
                self.spool.forget_writer(name)
                continue
            writer = Writer(name, path, segment, offset, seq)
            writer.marks.append((self.spool.last_seq, seq))
            self.writers[name] = writer

    def _intake(self) -> bool:
        """Read new records of every writer and commit them with the cursors; whether any."""
        assert self.spool is not None
        records: list[tuple[list[Any], bytes]] = []
        owners: list[Writer] = []
        moved: list[Writer] = []
        finished: list[Writer] = []
        names = self._writer_names()
        for gone in set(self.writers) - set(names):  # removed by hand: nothing left to read
            log.warning("relay: writer directory %s disappeared", gone)
            del self.writers[gone]
            self.spool.forget_writer(gone)
        for name in names:
            writer = self.writers.get(name)
            if writer is None:
                path = os.path.join(spooldir.writers_dir(self.spool_path), name)
                found = spooldir.segments(path)
                if not found:
                    continue
                writer = self.writers[name] = Writer(name, path,
                                                     spooldir.segment_number(found[0]), 0, 0)
            dead = not spooldir.locked(os.path.join(writer.path, "lock"))
            before = len(records)
            self._read(writer, records, dead)
            owners.extend([writer] * (len(records) - before))
            if len(records) > before:
                moved.append(writer)
            elif dead:
                finished.append(writer)
            if len(records) >= READ_BATCH:
                break
        if records:
            headers = [cloudevents_headers(meta[1], meta[2], meta[11], meta[10])
                       if len(meta) > 11 and meta[8] is None else record_headers(value, meta[8])
                       for meta, value in records]
            # Queued and produced at once, from here, as callers did in-process: rows and
            # cursors are committed with the delivery marks (a record delivered by then is
            # written once). Under the produce lock: see KafkaTransport.hand_over_locked.
            with self.transport.produce_lock:
                seqs = self.spool.adopt(records, {w.name: w.cursor() for w in moved})
                events = [(seq, meta[6], meta[7].encode(), value, header, meta[5])
                          for (meta, value), seq, header in zip(records, seqs, headers,
                                                                strict=True) if seq is not None]
                self.transport.hand_over_locked(events)
            last: dict[str, tuple[int, int]] = {}
            for writer, (meta, _), seq in zip(owners, records, seqs, strict=True):
                last[writer.name] = (seq or 0, int(meta[0]))
            for writer in moved:
                writer.marks.append(last[writer.name])
        committed = self.spool.committed_cursors
        for writer in self.writers.values():
            self._delete_passed(writer, committed.get(writer.name))
        for writer in finished:
            if writer.seq and committed.get(writer.name) != writer.cursor():
                continue  # its last records are not committed yet
            log.info("relay: writer %s is gone and its journal drained; removing it", writer.name)
            shutil.rmtree(writer.path, ignore_errors=True)
            self.spool.forget_writer(writer.name)
            del self.writers[writer.name]
        if not self.spool.queued and self.spool._cursors_pending:
            self.spool.ingest()  # cursors with no record left to commit them (all shed)
        return bool(records)

    def _read(self, writer: Writer, out: list[tuple[list[Any], bytes]], dead: bool) -> None:
        """Append ``writer``'s new records to ``out``, moving its reading position."""
        while len(out) < READ_BATCH:
            data = _map(self._segment(writer, writer.segment))
            if data is None:
                later = [n for n in map(spooldir.segment_number, spooldir.segments(writer.path))
                         if n > writer.segment]
                if not later:
                    return
                writer.segment, writer.offset = later[0], 0  # a gap: only after a crash
                continue
            try:
                for _start, end, payload in spooldir.frames_from(data, writer.offset):
                    text, _, value = payload.partition(b"\n")
                    meta = orjson.loads(text)
                    out.append((meta, value))
                    writer.offset, writer.seq, writer.bad_since = end, int(meta[0]), None
                    if len(out) >= READ_BATCH:
                        return
                if not _at_end(data, writer.offset):
                    # A frame that does not check out: being written, or corrupt. It is corrupt
                    # once the writer is dead or has moved on to the next segment.
                    final = dead or self._started(writer, writer.segment + 1)
                    if self._skip_bad(writer, data, final):
                        continue
                    return
            finally:
                data.close()
            if not self._started(writer, writer.segment + 1):
                return  # nothing more yet (the next segment may be the writer's spare)
            writer.segment, writer.offset = writer.segment + 1, 0

    @staticmethod
    def _segment(writer: Writer, number: int) -> str:
        return os.path.join(writer.path, f"{spooldir.JOURNAL_NAME}.journal.{number}")

    def _started(self, writer: Writer, number: int) -> bool:
        """Whether segment ``number`` holds a record: the writer has finished the one before."""
        data = _map(self._segment(writer, number))
        if data is None:
            return False
        try:
            return not _at_end(data, 0)
        finally:
            data.close()

    def _skip_bad(self, writer: Writer, data: mmap.mmap, final: bool) -> bool:
        """Skip the bad frame at the reading position (resynchronise on the next intact one),
        count it and say so; or, while a live writer may still be writing it, wait (False)."""
        now = time.monotonic()
        if not final:
            if writer.bad_since is None:
                writer.bad_since = now
            if now - writer.bad_since < CORRUPT_AFTER:
                return False
        found = spooldir.resync(data, writer.offset)
        writer.corrupt += 1
        writer.bad_since = None
        self.stats.incr("journal_corrupt_frames")
        log.error("relay: corrupt frame in writer %s's journal, segment %s at offset %s; "
                  "skipped (%s so far for this writer)", writer.name, writer.segment,
                  writer.offset, writer.corrupt)
        writer.offset = len(data) if found is None else found
        return True

    def _delete_passed(self, writer: Writer, committed: str | None) -> None:
        """Segments before the committed cursor's: every record of them is in SQLite."""
        if committed is None:
            return
        segment = int(json.loads(committed)[0])
        if segment <= writer.deleted_below:
            return
        for path in spooldir.segments(writer.path):
            if spooldir.segment_number(path) < segment:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
        writer.deleted_below = segment

    # -- status ------------------------------------------------------------------------------
    def _confirm(self) -> None:
        """Move each writer's confirmed seq past every mark whose events are all delivered."""
        assert self.spool is not None
        oldest = self.spool.min_pending_seq()
        for writer in self.writers.values():
            while writer.marks and (oldest is None or writer.marks[0][0] < oldest):
                writer.delivered = max(writer.delivered, writer.marks.popleft()[1])

    def status(self) -> dict[str, Any]:
        """The figures hosts read. Cheap on purpose (computed up to every few milliseconds
        while events move): no count over the trail, the oldest pending row by its index."""
        assert self.spool is not None
        transport = self.transport
        self._confirm()
        oldest = self.spool.oldest_pending_created()
        age = None if oldest is None else max(0.0, time.time() - oldest)
        state = transport.delivery_state()
        healthy = state.pop("delivering") and not (
            age is not None and age > max(self.settings.stall_timeout_seconds, 30.0))
        return {
            "version": spooldir.VERSION,
            "running": True,
            "pid": os.getpid(),
            "port": self.port,
            "updated": time.time(),
            "healthy": healthy,
            "topic": self.settings.order_events_topic,
            "spool_depth": self.spool.depth,
            "spool_pending_bytes": self.spool._pending_bytes,
            "spool_over_limit": self.spool._pending_bytes > self.spool.max_bytes,
            "spool_shed": self.spool._shed,
            "spool_rejected": self.spool.rejected_count(),
            "oldest_pending_age_seconds": age,
            **state,
            "journal_corrupt_frames": sum(w.corrupt for w in self.writers.values()),
            "writers": {w.name: {"read": w.seq, "delivered": w.delivered}
                        for w in self.writers.values()},
        }

    def _write_status(self) -> None:
        """Replace the status file when a figure changed (at most every ``SCAN_EVERY``) and at
        least every ``STATUS_EVERY`` seconds (hosts read its age as liveness)."""
        now = time.monotonic()
        if now < self._compute_due:
            return
        self._compute_due = now + STATUS_COMPUTE_EVERY
        doc = self.status()
        # the age moves every time: a change of the rest is what makes a new file due
        changed = {k: v for k, v in doc.items() if k not in ("updated", "oldest_pending_age_"
                                                             "seconds")} != {
            k: v for k, v in self._last_status.items() if k not in (
                "updated", "oldest_pending_age_seconds")}
        if changed or now >= self._status_due:
            self._last_status = doc
            self._status_due = now + spooldir.STATUS_EVERY
            try:
                spooldir.write_json(spooldir.status_path(self.spool_path), doc)
            except OSError as exc:  # a full disk: hosts then see a stale status, say so once
                if not self._status_failed:
                    log.error("relay: cannot write %s (%s); hosts will report the relay as "
                              "not running", spooldir.status_path(self.spool_path), exc)
                self._status_failed = True
            else:
                self._status_failed = False

    def _idle(self) -> bool:
        """With ``exit_when_idle``: whether to exit now (no writer, nothing pending, for a
        moment; or no writer and no delivery for ``GIVE_UP_AFTER``)."""
        if not self.exit_when_idle:
            return False
        assert self.spool is not None
        now = time.monotonic()
        if self.writers or self._writer_names():
            self._idle_since = None
            return False
        if self._idle_since is None:
            self._idle_since = now
        if self.spool.depth or self.spool.queued:
            if now - self._idle_since < GIVE_UP_AFTER:
                return False
            log.warning("relay: no publisher left and %s events undeliverable for %s s; "
                        "exiting, they stay in spool %s for the next relay", self.spool.depth,
                        GIVE_UP_AFTER, self.spool_path)
            return True
        return now - self._idle_since >= IDLE_EXIT_AFTER

    # -- HTTP ----------------------------------------------------------------------------------
    def _serve_http(self) -> None:
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/health"):
                    doc = relay._last_status or {"running": True, "healthy": False}
                    body, kind = json.dumps(doc).encode(), "application/json"
                    code = 200 if doc.get("healthy") else 503
                elif self.path.startswith("/metrics"):
                    try:
                        body, kind = relay.metrics()
                        code = 200
                    except Exception as exc:  # prometheus_client missing: say how to get it
                        body, kind, code = str(exc).encode(), "text/plain", 501
                else:
                    body, kind, code = b"not found: try /health or /metrics", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # no access log

        try:
            self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        except OSError as exc:
            log.warning("relay: no HTTP endpoint on 127.0.0.1:%s (%s)", self.port, exc)
            return
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="openalgo-events-relay-http",
                         daemon=True).start()

    def metrics(self) -> tuple[bytes, str]:
        from ..integrations.metrics import exposition, metrics_registry
        from ..publisher import EventPublisher

        publisher = EventPublisher(self.transport, stats=self.stats)
        return exposition(metrics_registry(lambda: publisher))


def _at_end(data: mmap.mmap, offset: int) -> bool:
    """Whether ``offset`` is past the last frame: the end, or the zeroed, unwritten rest."""
    return offset + 8 > len(data) or data[offset:offset + 4] == b"\0\0\0\0"


def _map(path: str) -> mmap.mmap | None:
    """A segment mapped read-only, or None when it does not exist (yet, or any more)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        if os.fstat(fd).st_size == 0:
            return None
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
