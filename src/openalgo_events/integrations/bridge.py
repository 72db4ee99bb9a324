"""Kafka -> Socket.IO: every app process re-emits the order topic to its own browsers.

With several app processes or hosts, an event published by one must reach browsers connected
to any other. Each process runs a bridge reading the whole topic (no consumer group: every
partition assigned from its end at start-up, so each process sees every event) and emits each
envelope as Socket.IO event ``event_type`` with payload ``data``: to the user's room when
``ORDER_EVENT_SOCKETIO_SCOPE=user``, else to everyone.

Run every process in KAFKA mode and let the bridge make all UI emits (the emit mirror with
``local=False`` holds back the app's own broadcasts), so each browser sees each event once.

The consumer runs on a real OS thread (a blocking ``poll`` on a green thread would freeze an
eventlet worker); it hands each envelope to a ``Handoff`` drained by one background task of
the Socket.IO server (a green thread on the worker's hub under eventlet), woken by the hand-off
at once, because a green-thread server must not be driven from a foreign OS thread. Call
``start()`` on the app's thread (the gunicorn hook does). Browsers get what the catalog lets
them (``EventSpec.socketio_payload``), as from ``SocketIOTransport``.

It reads with ``isolation.level=read_committed``: only what a transactional producer committed.
With ``ORDER_EVENT_SOCKETIO_RECOVERY=TRUE`` each payload carries the record's partition and
offset, the last events stay in memory, and a socket that reconnects with its last offset gets
what it missed, read back from the topic when memory no longer holds it (after a restart, or
from another process): ``openalgo_events.recovery``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._handoff import Handoff
from .._threads import new_event, start_thread
from ..config import Settings
from ..envelope import Envelope
from ..errors import EventValidationError, require
from ..recovery.offsets import kafka_stream
from ..recovery.server import Feed, Hub, RecoveryOptions
from ..recovery.window import Sent
from ..transports.kafka_errors import QuietLibrdkafkaLog
from ..transports.socketio import browser_payload, green_server, user_room
from .mirror import original_emit

log = logging.getLogger("openalgo_events.bridge")


@dataclass(frozen=True, slots=True)
class _Record:
    """An envelope read from the topic, and where it sits."""

    envelope: Envelope
    partition: int
    offset: int


@dataclass(frozen=True)
class _Assigned:
    """The partitions are assigned: the topic's stream and each partition's next offset."""

    stream: str
    next_offsets: dict[int, int]


class KafkaSocketIOBridge:
    """Consumes the order topic and re-emits each envelope to this process's sockets.

    ``active`` (read for each record) holds the emits back while it returns False: an app
    whose route may leave KAFKA mode at run time, where its own emits reach the browsers.

    >>> bridge = KafkaSocketIOBridge(settings, socketio).start()  # doctest: +SKIP
    >>> bridge.ready.wait(10)  # doctest: +SKIP
    """

    def __init__(self, settings: Settings, socketio: Any, *, namespace: str = "/",
                 active: Callable[[], bool] | None = None) -> None:
        self._ck: Any = require("confluent_kafka", "kafka")
        self.settings = settings
        self.socketio = socketio
        self.namespace = namespace
        self.topic = settings.order_events_topic
        self.ready = new_event()  # set once every partition is assigned
        # Records to emit and, with recovery, the joins of connecting sockets and the reader's
        # answers: one task, so each join is served in order with the emits.
        self._inbox: Handoff[Any] = Handoff(self._emit, green=green_server(socketio),
                                            on_error=self._emit_failed)
        self._emit_to = original_emit(socketio)
        self._active = active
        self._user_scope = settings.socketio_scope == "user"
        options = RecoveryOptions.from_settings(settings)
        self.recovery: Feed | None = None
        self._reader: Any = None
        if options is not None:
            self.recovery = Feed(Hub.of(socketio, namespace), options, self._inbox.put,
                                 self._emit_to, green=self._inbox.green, primary=True)
        self._stop = new_event()
        self._thread: Any = None
        self.received = 0
        self.emitted = 0
        self.invalid = 0
        self.last_error: str | None = None
        self.brokers_down = False  # one log line per change, never one per librdkafka error
        self._down_checked = 0.0

    def start(self) -> KafkaSocketIOBridge:
        if self.recovery is not None:
            from ..recovery.kafka import TopicReader

            self._reader = TopicReader(self.settings, self._tagged, self._inbox.put,
                                       config={"logger": QuietLibrdkafkaLog()}).start()
            self.recovery.reader = self._reader
        self._thread = start_thread(self._consume, "openalgo-events-bridge")
        self.socketio.start_background_task(self._inbox.run)
        return self

    def stop(self) -> None:
        """Ask the loops to end; the consumers leave within one poll."""
        self._stop.set()
        if self.recovery is not None:
            self.recovery.release()
        if self._reader is not None:
            self._reader.stop()
        self._inbox.stop()

    # -- consumer thread (a real OS thread) ---------------------------------------------------
    def _consume(self) -> None:
        conf = {**self.settings.client_config(), "client.id": "openalgo-events-bridge",
                "group.id": f"openalgo-events-bridge-{uuid.uuid4().hex}",
                "enable.auto.commit": False, "error_cb": self._on_error,
                "isolation.level": "read_committed",  # no copy of an aborted transaction
                "logger": QuietLibrdkafkaLog()}
        consumer = self._ck.Consumer(conf)
        try:
            if self._assign(consumer):
                while not self._stop.is_set():
                    self._take(consumer.poll(0.25))
                    if self.brokers_down:
                        self._check_back(consumer)
        finally:
            consumer.close()

    def _assign(self, consumer: Any) -> bool:
        """Assign every partition at its current end; retry until the topic exists."""
        while not self._stop.is_set():
            try:
                cluster = consumer.list_topics(self.topic, timeout=5.0)
                meta = cluster.topics.get(self.topic)
                partitions = sorted(meta.partitions) if meta and not meta.error else []
                if partitions:
                    assigned = []
                    for p in partitions:
                        _, high = consumer.get_watermark_offsets(
                            self._ck.TopicPartition(self.topic, p), timeout=5.0)
                        assigned.append(self._ck.TopicPartition(self.topic, p, high))
                    consumer.assign(assigned)
                    self._inbox.put(_Assigned(kafka_stream(str(cluster.cluster_id), self.topic),
                                              {tp.partition: tp.offset for tp in assigned}))
                    self.ready.set()
                    log.info("bridge reading %s (%s partitions) from the end", self.topic,
                             len(assigned))
                    return True
            except self._ck.KafkaException as exc:
                self.last_error = str(exc)
            self._stop.wait(1.0)
        return False

    def _take(self, msg: Any) -> None:
        if msg is None:
            return
        if msg.error():
            self.last_error = str(msg.error())
            return
        try:
            envelope = Envelope.from_json(msg.value())
        except EventValidationError as exc:
            self.invalid += 1
            log.warning("bridge skipped an unreadable message at %s[%s]@%s: %s",
                        msg.topic(), msg.partition(), msg.offset(), exc)
            return
        self.received += 1
        self._inbox.put(_Record(envelope, msg.partition(), msg.offset()))
        if self.brokers_down:
            self._back()

    def _on_error(self, err: Any) -> None:
        """librdkafka's errors: a line when the brokers are lost, the rest at debug level."""
        self.last_error = str(err)
        ck = self._ck.KafkaError
        lost = err.code() in (ck._ALL_BROKERS_DOWN, ck._AUTHENTICATION) or err.fatal()
        if lost and not self.brokers_down:
            self.brokers_down = True
            self._down_checked = time.monotonic()
            level = logging.ERROR if err.code() == ck._AUTHENTICATION else logging.WARNING
            log.log(level, "bridge lost the brokers; browsers get no events from %s until "
                    "they are back: %s", self.topic, err)
        else:
            log.debug("bridge consumer: %s", err)

    def _check_back(self, consumer: Any) -> None:
        """While down, ask for the topic's metadata every 2 s: an answer means the brokers are
        back (a quiet topic brings no message to say so)."""
        if time.monotonic() - self._down_checked < 2.0:
            return
        self._down_checked = time.monotonic()
        try:
            consumer.list_topics(self.topic, timeout=2.0)
        except self._ck.KafkaException:
            return
        self._back()

    def _back(self) -> None:
        self.brokers_down = False
        log.warning("bridge reaches the brokers again; reading %s", self.topic)

    # -- emitter (a background task of the Socket.IO server) ----------------------------------
    def _emit(self, item: Any) -> None:
        if isinstance(item, _Record):
            if self._active is not None and not self._active():
                return
            envelope = item.envelope
            room = user_room(envelope.user_id) if self._user_scope else None
            if self.recovery is None:
                self._emit_to(envelope.event_type, browser_payload(envelope), to=room,
                              namespace=self.namespace)
            else:
                self.recovery.emit(envelope.event_type, browser_payload(envelope), room,
                                   item.partition, item.offset)
            self.emitted += 1
        elif isinstance(item, _Assigned):
            if self.recovery is not None:
                self.recovery.start(item.stream, item.next_offsets)
        elif self.recovery is not None:
            self.recovery.handle(item)

    def _tagged(self, envelope: Envelope, partition: int, offset: int) -> Sent:
        """What the bridge would have emitted for a record (the reader's ``build``)."""
        assert self.recovery is not None
        room = user_room(envelope.user_id) if self._user_scope else None
        return self.recovery.tag(envelope.event_type, browser_payload(envelope), room,
                                 partition, offset)

    def _emit_failed(self, item: Any) -> None:
        if isinstance(item, _Record):
            log.exception("bridge could not emit %s event %s", item.envelope.event_type,
                          item.envelope.event_id)
        else:
            log.exception("bridge recovery step %s failed", type(item).__name__)

    def health(self) -> dict[str, Any]:
        return {"healthy": self.ready.is_set() and not self.brokers_down
                and self._thread is not None
                and self._thread.is_alive(), "topic": self.topic, "received": self.received,
                "emitted": self.emitted, "backlog": self._inbox.pending, "invalid": self.invalid,
                "brokers_reachable": not self.brokers_down,
                "last_error": self.last_error,
                **({"recovery": {**self.recovery.health(), "reads": self._reader.reads,
                                 "reads_waiting": self._reader.waiting}}
                   if self.recovery is not None and self._reader is not None else {})}
