"""Reading the order topic back for recovering sockets (KAFKA mode), on a real OS thread.

A feed sends a ``ReadRequest`` when a socket missed events its window no longer holds (the app
restarted, the socket comes from another process, or the gap is older than the window). The
reader takes every request waiting, reads the union of their stretches once (500 sockets
reconnecting after a restart cost one read, not 500), keeps for each request the events its
rooms entitle it to, and hands each request back through ``deliver`` (the bridge's hand-off,
so the feed continues on the bridge's task).

Every librdkafka call happens here, never on a green thread or a request's thread. The
consumer reads with ``isolation.level=read_committed`` and without a consumer group
(``assign``): it sees what the bridge sees, commits nothing and joins no group.
"""

from __future__ import annotations

import collections
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from .._threads import new_event, new_lock, start_thread
from ..config import Settings
from ..envelope import Envelope
from ..errors import EventValidationError, require
from .server import ReadRequest
from .window import Sent

log = logging.getLogger("openalgo_events.recovery")

READ_TIMEOUT = 10.0  # seconds one read may take before its requests are answered unavailable
MAX_WAITING = 2000  # requests waiting at most; beyond, a request is refused (unavailable)
RAW_FACTOR = 10  # records read per event sent at most (other users' records, in user scope)
BATCH = 500  # messages per consume() call


class TopicReader:
    """Reads stretches of ``settings.order_events_topic`` for ``ReadRequest``s.

    ``build(envelope, partition, offset)`` makes the ``Sent`` a browser gets for a record (its
    payload tagged with its offset, its room); ``deliver(request)`` hands each request back,
    answered; ``config`` adds librdkafka properties (the bridge passes its quiet ``logger``).
    ``start()`` starts the thread, ``stop()`` ends it within a second.

    >>> reader = TopicReader(settings, bridge.tagged, bridge_handoff.put).start()  # doctest: +SKIP
    """

    def __init__(self, settings: Settings, build: Callable[[Envelope, int, int], Sent],
                 deliver: Callable[[ReadRequest], object], *,
                 config: dict[str, Any] | None = None, timeout: float = READ_TIMEOUT) -> None:
        self._ck: Any = require("confluent_kafka", "kafka")
        self.settings = settings
        self.topic = settings.order_events_topic
        self.build = build
        self.deliver = deliver
        self.timeout = timeout
        self.config = config or {}
        self._waiting: collections.deque[ReadRequest] = collections.deque()
        self._lock = new_lock()
        self._wake = new_event()
        self._stop = new_event()
        self._thread: Any = None
        self._ended = False
        self.reads = 0
        self.records = 0
        self.last_error: str | None = None

    def start(self) -> TopicReader:
        self._thread = start_thread(self._run, "openalgo-events-recovery-reader")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def submit(self, request: ReadRequest) -> bool:
        """Queue ``request`` (any thread; never blocks); False when too many are waiting, or
        when the reader has stopped."""
        with self._lock:
            if self._ended or len(self._waiting) >= MAX_WAITING:
                return False
            self._waiting.append(request)
        self._wake.set()
        return True

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # -- the reader's thread ------------------------------------------------------------------
    def _run(self) -> None:
        consumer: Any = None
        try:
            consumer = self._ck.Consumer({
                **self.settings.client_config(), "client.id": "openalgo-events-recovery",
                "group.id": f"openalgo-events-recovery-{uuid.uuid4().hex}",  # never joined
                "enable.auto.commit": False, "isolation.level": "read_committed",
                "enable.partition.eof": False, **self.config,
            })
            while not self._stop.is_set():
                self._wake.wait(1.0)
                self._wake.clear()
                with self._lock:
                    batch = list(self._waiting)
                    self._waiting.clear()
                if batch:
                    self._answer(consumer, batch)
        except Exception:
            log.exception("recovery's topic reader stopped; reconnecting sockets are told their "
                          "missed events could not be read back")
        finally:
            with self._lock:  # nothing waits for an answer that will not come
                self._ended = True
                left = list(self._waiting)
                self._waiting.clear()
            for request in left:
                request.reason = "unavailable"
                self.deliver(request)
            if consumer is not None:
                consumer.close()

    def _answer(self, consumer: Any, batch: list[ReadRequest]) -> None:
        try:
            self._read(consumer, batch)
        except Exception as exc:  # a broker error, a bug: these sockets are told, not stuck
            self.last_error = str(exc)
            log.warning("recovery could not read %s back: %s", self.topic, exc)
            for request in batch:
                request.reason = request.reason or "unavailable"
        finally:
            for request in batch:
                self.deliver(request)

    def _read(self, consumer: Any, batch: list[ReadRequest]) -> None:
        ck = self._ck
        partitions = {p for r in batch for p in (*r.ranges, *r.ahead)}
        marks = {p: consumer.get_watermark_offsets(ck.TopicPartition(self.topic, p),
                                                   timeout=5.0, cached=False)
                 for p in partitions}
        for request in batch:
            if any(first < marks[p][0] for p, (first, _) in request.ranges.items()):
                request.reason = "too_old"  # deleted by retention
            elif any(seen >= marks[p][1] for p, seen in request.ahead.items()):
                request.reason = "unknown_offset"  # beyond the topic's end: not this topic's
            elif sum(end - first for first, end in request.ranges.values()) > (
                    RAW_FACTOR * max(request.limit, 1)):
                request.reason = "too_many"
        live = [r for r in batch if r.reason is None and r.ranges]
        if not live:
            return
        first = {p: min(r.ranges[p][0] for r in live if p in r.ranges)
                 for p in {p for r in live for p in r.ranges}}
        end = {p: max(r.ranges[p][1] for r in live if p in r.ranges) for p in first}
        done = dict(first)  # per partition, the next offset not yet read
        consumer.assign([ck.TopicPartition(self.topic, p, o) for p, o in first.items()])
        self.reads += 1
        deadline = time.monotonic() + self.timeout
        try:
            while any(done[p] < end[p] for p in end):
                if self._stop.is_set() or time.monotonic() > deadline:
                    break
                for msg in consumer.consume(BATCH, 0.2):
                    self._take(msg, live, done, end)
                # Past transaction markers and aborted records the position moves on without
                # a message (read_committed).
                for tp in consumer.position([ck.TopicPartition(self.topic, p) for p in end]):
                    if tp.offset >= 0:
                        done[tp.partition] = max(done[tp.partition], tp.offset)
        finally:
            consumer.unassign()
        for request in live:
            if request.reason is None and any(done[p] < e for p, (_, e) in
                                              request.ranges.items()):
                request.reason = "unavailable"
        if any(done[p] < end[p] for p in end):
            log.warning("recovery read of %s stopped short after %s s: %s sockets are told "
                        "their events could not be recovered", self.topic, self.timeout,
                        len(live))

    def _take(self, msg: Any, live: list[ReadRequest], done: dict[int, int],
              end: dict[int, int]) -> None:
        if msg.error() is not None:
            self.last_error = str(msg.error())
            return
        partition, offset = msg.partition(), msg.offset()
        done[partition] = max(done[partition], offset + 1)
        if offset >= end[partition]:
            return
        self.records += 1
        value = msg.value()
        try:
            envelope = Envelope.from_json(value) if value is not None else None
        except EventValidationError:
            envelope = None
        if envelope is None:
            return  # unreadable: the bridge skipped it too
        sent: Sent | None = None
        for request in live:
            span = request.ranges.get(partition)
            if request.reason is not None or span is None or not span[0] <= offset < span[1]:
                continue
            sent = sent or self.build(envelope, partition, offset)
            if sent.for_rooms(request.rooms):
                request.found.append(sent)
                if len(request.found) > request.limit:
                    request.reason = "too_many"
                    request.found.clear()
