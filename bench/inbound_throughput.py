"""Handled messages per second of the inbound consumer on a real broker.

Produces N order_acknowledgment messages to a fresh ESB topic, then runs an ``EsbConsumer``
(no Socket.IO server: the built-in handler logs) and times it from the first handled message
to the last. Every message goes through the full path: size and envelope checks, the
handled-ids store (SQLite), the handler, and a synchronous offset commit per poll batch.

    python bench/inbound_throughput.py --messages 20000
    KAFKA_BOOTSTRAP_SERVERS=host:9092 python bench/inbound_throughput.py

Without KAFKA_BOOTSTRAP_SERVERS it starts the bundled Tansu broker.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from openalgo_events import Settings
from openalgo_events.devbroker import DevBroker
from openalgo_events.envelope import new_event_id, utc_timestamp
from openalgo_events.inbound import EsbConsumer


def produce(bootstrap: str, topic: str, count: int, partitions: int) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(10)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    for i in range(count):
        user = f"user{i % 50}"
        doc = {"event_id": new_event_id(), "event_type": "order_acknowledgment",
               "timestamp": utc_timestamp(), "user_id": user, "source": "ESB",
               "data": {"orderid": f"ORD{i}", "status": "acknowledged", "source": "ESB"}}
        while True:
            try:
                producer.produce(topic, json.dumps(doc).encode(), user.encode())
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0


def measure(bootstrap: str, count: int, partitions: int, state_dir: Path) -> dict[str, float]:
    topic = f"bench-esb-{uuid.uuid4().hex[:8]}"
    produce(bootstrap, topic, count, partitions)
    settings = Settings.from_env({
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_ESB_EVENTS_TOPIC": topic,
        "KAFKA_CONSUMER_GROUP": f"bench-{uuid.uuid4().hex[:8]}",
        "KAFKA_CONSUMER_AUTO_OFFSET_RESET": "earliest",
        "KAFKA_CONSUMER_STATE_PATH": str(state_dir / f"{topic}.db"),
    })
    consumer = EsbConsumer(settings).start()
    try:
        while consumer.health()["handled"] == 0:
            time.sleep(0.001)
        started, first = time.perf_counter(), consumer.health()["handled"]
        while consumer.health()["handled"] < count:
            time.sleep(0.01)
        seconds = time.perf_counter() - started
    finally:
        consumer.stop()
    return {"messages": count, "partitions": partitions, "seconds": round(seconds, 3),
            "handled_per_second": round((count - first) / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with ExitStack() as stack:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or stack.enter_context(
            DevBroker()).bootstrap_servers
        state_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for _ in range(args.runs):
            print(json.dumps(measure(bootstrap, args.messages, args.partitions, state_dir)))


if __name__ == "__main__":
    main()
