"""Kafka -> Socket.IO: every app process re-emits the order topic to its own browsers.

With several app processes or hosts, an event published by one must reach browsers connected
to any other. Each process runs a bridge reading the whole topic (no consumer group: every
partition assigned from its end at start-up, so each process sees every event) and emits each
envelope as Socket.IO event ``event_type`` with payload ``data``: to the user's room when
``ORDER_EVENT_SOCKETIO_SCOPE=user``, else to everyone.

Run every process in KAFKA mode and let the bridge make all UI emits (the emit mirror with
``local=False`` holds back the app's own broadcasts), so each browser sees each event once.

The consumer runs on a real OS thread (a blocking ``poll`` on a green thread would freeze an
eventlet worker); emits happen on a background task of the Socket.IO server, which takes
envelopes from a thread-safe deque, because a green-thread server must not be driven from a
foreign OS thread.
"""

from __future__ import annotations

import collections
import logging
import uuid
from typing import Any

from .._threads import new_event, start_thread
from ..config import Settings
from ..envelope import Envelope
from ..errors import EventValidationError, require
from ..transports.kafka_errors import ClientErrorLog, QuietLibrdkafkaLog
from ..transports.socketio import user_room
from .mirror import original_emit

log = logging.getLogger("openalgo_events.bridge")


class KafkaSocketIOBridge:
    """Consumes the order topic and re-emits each envelope to this process's sockets.

    >>> bridge = KafkaSocketIOBridge(settings, socketio).start()  # doctest: +SKIP
    >>> bridge.ready.wait(10)  # doctest: +SKIP
    """

    def __init__(self, settings: Settings, socketio: Any, *, namespace: str = "/",
                 emit_interval: float = 0.02) -> None:
        self._ck: Any = require("confluent_kafka", "kafka")
        self.settings = settings
        self.socketio = socketio
        self.namespace = namespace
        self.emit_interval = emit_interval
        self.topic = settings.order_events_topic
        self.ready = new_event()  # set once every partition is assigned
        self._inbox: collections.deque[Envelope] = collections.deque()
        self._errors = ClientErrorLog(log, "bridge consumer")
        self._stop = new_event()
        self._thread: Any = None
        self.received = 0
        self.emitted = 0
        self.invalid = 0
        self.last_error: str | None = None

    def start(self) -> KafkaSocketIOBridge:
        self._thread = start_thread(self._consume, "openalgo-events-bridge")
        self.socketio.start_background_task(self._emit_loop)
        return self

    def stop(self) -> None:
        """Ask both loops to end; the consumer leaves within one poll."""
        self._stop.set()

    # -- consumer thread (a real OS thread) ---------------------------------------------------
    def _consume(self) -> None:
        conf = {**self.settings.client_config(), "client.id": "openalgo-events-bridge",
                "group.id": f"openalgo-events-bridge-{uuid.uuid4().hex}",
                "enable.auto.commit": False, "error_cb": self._on_error,
                "logger": QuietLibrdkafkaLog()}
        consumer = self._ck.Consumer(conf)
        try:
            if self._assign(consumer):
                while not self._stop.is_set():
                    self._take(consumer.poll(0.25))
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
        self._errors.ok()
        self._inbox.append(envelope)

    def _on_error(self, err: Any) -> None:
        """librdkafka's error callback: one line per state change, chatter at debug."""
        self.last_error = str(err)
        self._errors.error(err)

    # -- emitter (a background task of the Socket.IO server) ----------------------------------
    def _emit_loop(self) -> None:
        emit = original_emit(self.socketio)
        user_scope = self.settings.socketio_scope == "user"
        while not self._stop.is_set():
            while self._inbox:
                envelope = self._inbox.popleft()
                room = user_room(envelope.user_id) if user_scope else None
                try:
                    emit(envelope.event_type, dict(envelope.data), to=room,
                         namespace=self.namespace)
                    self.emitted += 1
                except Exception:
                    log.exception("bridge could not emit %s event %s", envelope.event_type,
                                  envelope.event_id)
            self.socketio.sleep(self.emit_interval)

    def health(self) -> dict[str, Any]:
        return {"healthy": self.ready.is_set() and self._thread is not None
                and self._thread.is_alive(), "topic": self.topic, "received": self.received,
                "emitted": self.emitted, "backlog": len(self._inbox), "invalid": self.invalid,
                "last_error": self.last_error}
