"""Helpers for broker tests: deadline waits, topic creation, reading a topic without a group."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, step: float = 0.02,
             message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(step)


def create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions,
                                            replication_factor=1)])
    for future in futures.values():
        future.result(10)


def read_topic(bootstrap: str, name: str, count: int, timeout: float = 30.0) -> list[Any]:
    """Read ``count`` messages from every partition of ``name`` (no consumer group: assign)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    try:
        metadata = wait_for(lambda: consumer.list_topics(name, timeout=5).topics[name].partitions
                            or None, timeout, message=f"topic {name}")
        consumer.assign([TopicPartition(name, p, OFFSET_BEGINNING) for p in metadata])
        messages: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(messages) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                messages.append(msg)
        return messages
    finally:
        consumer.close()


def envelope_of(msg: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(msg.value())
    return doc


class TopicCollector:
    """Reads every partition of a topic from the beginning on a background thread, recording
    (partition, offset, key, value, headers) until stopped."""

    def __init__(self, bootstrap: str, name: str) -> None:
        import threading

        self.bootstrap, self.name = bootstrap, name
        self.messages: list[tuple[int, int, bytes, bytes, list[Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": uuid.uuid4().hex,
                             "enable.auto.commit": False, "fetch.wait.max.ms": 10,
                             "topic.metadata.refresh.interval.ms": 1000})
        assigned: set[int] = set()
        next_check = 0.0
        try:
            while not self._stop.is_set():
                if time.monotonic() >= next_check:  # new partitions appear as topics auto-create
                    next_check = time.monotonic() + 1.0
                    try:
                        parts = consumer.list_topics(self.name, timeout=1).topics[self.name]
                        new = set(parts.partitions) - assigned
                    except Exception:
                        new = set()
                    if new:
                        assigned |= new
                        consumer.assign([TopicPartition(self.name, p, OFFSET_BEGINNING)
                                         for p in sorted(assigned)])
                msg = consumer.poll(0.05)
                if msg is not None and msg.error() is None:
                    self.messages.append((msg.partition(), msg.offset(), msg.key(), msg.value(),
                                          msg.headers() or []))
        finally:
            consumer.close()

    def event_ids(self) -> list[str]:
        return [json.loads(value)["event_id"] for _, _, _, value, _ in self.messages]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
