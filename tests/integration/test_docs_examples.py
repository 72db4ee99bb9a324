"""The consumer example in docs/consumers.md runs as printed against a real broker."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer

from openalgo_events import EventPublisher, KafkaEventPublisher, MemoryTransport, Settings
from tests.support import create_topic, wait_for

pytestmark = pytest.mark.broker
DOC = Path(__file__).resolve().parents[2] / "docs" / "consumers.md"


def _example_code() -> str:
    section = DOC.read_text().split("## Python (confluent-kafka)", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "docs/consumers.md lost its Python example"
    return match.group(1)


def test_the_documented_consumer_handles_each_event_once(kafka_bootstrap, topic, tmp_path):
    """The example joins its group, handles every event type it is sent, skips a redelivered
    copy (same event_id) and stops cleanly on Ctrl-C."""
    create_topic(kafka_bootstrap, topic)
    script = tmp_path / "consumer.py"
    script.write_text(_example_code())
    publisher = KafkaEventPublisher(kafka_bootstrap, topic, settings=Settings.from_env(
        {"KAFKA_SPOOL_PATH": str(tmp_path / "spool.db")}))
    placed = publisher.publish_order_event("alice", "SBIN-EQ", "BUY", "ORD1", "live", quantity=5)
    publisher.publish("order_update", "alice", orderid="ORD1", order_status="complete")
    publisher.publish_password_change("bob", "success", "Password changed")
    assert publisher.flush(10) == 0  # close() never waits: the relay delivers
    publisher.close()
    sentinel = EventPublisher(MemoryTransport()).publish("force_logout", "carol",
                                                          message="Session expired")
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for envelope in (placed, sentinel):  # a redelivered copy, then one more event
        producer.produce(topic, envelope.value, envelope.key, headers=envelope.headers())
    assert producer.flush(10) == 0

    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "KAFKA_ORDER_EVENTS_TOPIC": topic, "CONSUMER_GROUP": f"docs-{uuid.uuid4().hex}"}
    consumer = subprocess.Popen([sys.executable, str(script)], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: list[str] = []
    assert consumer.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(consumer.stdout or []), daemon=True)
    reader.start()
    try:
        wait_for(lambda: len(lines) >= 4, 40, message="the example's output")
    finally:
        consumer.send_signal(signal.SIGINT)
        _, err = consumer.communicate(timeout=30)
    reader.join(5)
    assert consumer.returncode == 0, err
    assert lines == ["alice: order ORD1 placed, BUY 5 SBIN-EQ (live)\n",
                     "alice: order ORD1 is complete\n",
                     "bob: success Password changed\n",
                     "carol: sessions changed (logout)\n"]
