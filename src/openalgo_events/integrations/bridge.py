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
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from .._handoff import Handoff
from .._threads import new_event, start_thread
from ..config import Settings
from ..envelope import Envelope
from ..errors import EventValidationError, require
from ..transports.kafka_errors import QuietLibrdkafkaLog
from ..transports.socketio import browser_payload, green_server, user_room
from .mirror import original_emit

log = logging.getLogger("openalgo_events.bridge")


class KafkaSocketIOBridge:
    """Consumes the order topic and re-emits each envelope to this process's sockets.

    >>> bridge = KafkaSocketIOBridge(settings, socketio).start()  # doctest: +SKIP
    >>> bridge.ready.wait(10)  # doctest: +SKIP
    """

    def __init__(self, settings: Settings, socketio: Any, *, namespace: str = "/") -> None:
        self._ck: Any = require("confluent_kafka", "kafka")
        self.settings = settings
        self.socketio = socketio
        self.namespace = namespace
        self.topic = settings.order_events_topic
        self.ready = new_event()  # set once every partition is assigned
        self._inbox: Handoff[Envelope] = Handoff(self._emit, green=green_server(socketio),
                                                 on_error=self._emit_failed)
        self._emit_to = original_emit(socketio)
        self._user_scope = settings.socketio_scope == "user"
        self._stop = new_event()
        self._thread: Any = None
        self.received = 0
        self.emitted = 0
        self.invalid = 0
        self.last_error: str | None = None
        self.brokers_down = False  # one log line per change, never one per librdkafka error
        self._down_checked = 0.0

    def start(self) -> KafkaSocketIOBridge:
        self._thread = start_thread(self._consume, "openalgo-events-bridge")
        self.socketio.start_background_task(self._inbox.run)
        return self

    def stop(self) -> None:
        """Ask both loops to end; the consumer leaves within one poll."""
        self._stop.set()
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
                meta = consumer.list_topics(self.topic, timeout=5.0).topics.get(self.topic)
                partitions = sorted(meta.partitions) if meta and not meta.error else []
                if partitions:
                    assigned = []
                    for p in partitions:
                        _, high = consumer.get_watermark_offsets(
                            self._ck.TopicPartition(self.topic, p), timeout=5.0)
                        assigned.append(self._ck.TopicPartition(self.topic, p, high))
                    consumer.assign(assigned)
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
        self._inbox.put(envelope)
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
    def _emit(self, envelope: Envelope) -> None:
        room = user_room(envelope.user_id) if self._user_scope else None
        self._emit_to(envelope.event_type, browser_payload(envelope), to=room,
                      namespace=self.namespace)
        self.emitted += 1

    def _emit_failed(self, envelope: Envelope) -> None:
        log.exception("bridge could not emit %s event %s", envelope.event_type,
                      envelope.event_id)

    def health(self) -> dict[str, Any]:
        return {"healthy": self.ready.is_set() and not self.brokers_down
                and self._thread is not None
                and self._thread.is_alive(), "topic": self.topic, "received": self.received,
                "emitted": self.emitted, "backlog": self._inbox.pending, "invalid": self.invalid,
                "brokers_reachable": not self.brokers_down,
                "last_error": self.last_error}
