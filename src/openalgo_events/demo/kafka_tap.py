"""Shows the page what reached Kafka: reads the order topic and re-emits each record.

A real OS thread reads with ``assign()`` (no consumer group to join or leave). It shows every
record produced since the tap started, however late it finds the topic (it may not exist
yet): it starts a little before the end of each partition and skips older records by their
timestamp.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from .._threads import new_event, real_sleep, start_thread
from ..config import Settings
from ..errors import require
from ..transports.socketio import user_room

log = logging.getLogger("openalgo_events.demo")
EVENT = "kafka_record"
BACKLOG = 500  # records per partition read back at start, for those produced meanwhile


def record_payload(msg: Any) -> dict[str, Any]:
    """The ``kafka_record`` payload: where the record is, its key, headers and envelope."""
    value = msg.value() or b""
    try:
        envelope: Any = json.loads(value)
    except ValueError:
        envelope = value.decode("utf-8", "replace")
    key = msg.key()
    return {
        "topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
        "key": key.decode("utf-8", "replace") if key is not None else None,
        "headers": {k: (v or b"").decode("utf-8", "replace") for k, v in msg.headers() or ()},
        "envelope": envelope,
    }


class KafkaTap:
    """Emits every new record of ``settings.order_events_topic`` as a ``kafka_record`` event.

    >>> tap = KafkaTap(settings, socketio).start()  # doctest: +SKIP
    >>> tap.stop()  # doctest: +SKIP
    """

    def __init__(self, settings: Settings, socketio: Any) -> None:
        self.settings = settings
        self.socketio = socketio
        self.topic = settings.order_events_topic
        self.since_ms = int(time.time() * 1000)
        self.ready = new_event()  # set once the tap reads its partitions
        self._stop = new_event()
        self._thread: Any = None

    def start(self) -> KafkaTap:
        self._thread = start_thread(self._run, "openalgo-events-demo-kafka-tap")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        kafka: Any = require("confluent_kafka", "kafka")
        consumer = kafka.Consumer({
            **self.settings.client_config(),
            "client.id": "openalgo-events-demo-tap",
            "group.id": f"openalgo-events-demo-{uuid.uuid4().hex[:8]}",  # never joined
            "enable.auto.commit": False,
            "isolation.level": "read_committed",  # what consumers are told to read
        })
        try:
            if self._assign(consumer, kafka):
                self._relay(consumer)
        except Exception:
            log.exception("the demo's Kafka tap stopped; the page no longer shows Kafka records")
        finally:
            consumer.close()

    def _assign(self, consumer: Any, kafka: Any) -> bool:
        while not self._stop.is_set():
            try:
                meta = consumer.list_topics(self.topic, timeout=2).topics.get(self.topic)
            except kafka.KafkaException as exc:
                log.warning("demo Kafka tap: cannot read metadata yet (%s)", exc)
                meta = None
            if meta is not None and meta.error is None and meta.partitions:
                partitions = []
                try:
                    for number in sorted(meta.partitions):
                        tp = kafka.TopicPartition(self.topic, number)
                        low, high = consumer.get_watermark_offsets(tp, timeout=5)
                        partitions.append(kafka.TopicPartition(self.topic, number,
                                                               max(low, high - BACKLOG)))
                except kafka.KafkaException as exc:
                    # A topic just created lists its partitions before their leaders serve
                    # (NOT_LEADER_FOR_PARTITION): not ready yet, try again.
                    log.info("demo Kafka tap: %s not ready yet (%s)", self.topic, exc)
                    real_sleep(0.5)
                    continue
                consumer.assign(partitions)
                self.ready.set()
                log.info("demo Kafka tap reading %s (%s partitions)", self.topic, len(partitions))
                return True
            real_sleep(0.5)
        return False

    def _relay(self, consumer: Any) -> None:
        user_scoped = self.settings.socketio_scope == "user"
        while not self._stop.is_set():
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                log.warning("demo Kafka tap: %s", msg.error())
                continue
            if msg.timestamp()[1] < self.since_ms:
                continue  # from before the tap started
            payload = record_payload(msg)
            user = payload["envelope"].get("user_id") if isinstance(payload["envelope"],
                                                                    dict) else None
            room = user_room(user) if user_scoped and user else None
            self.socketio.emit(EVENT, payload, to=room)
