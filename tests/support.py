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
