"""End-to-end receiver: reads a fresh topic (assign, no group) and records publish -> receive.

    python -m bench.consumer BOOTSTRAP TOPIC PHASE COUNT READY_FILE OUT_FILE TIMEOUT

READY_FILE is written once a probe message has come back, so the publisher never starts before
the consumer is fetching. Counts messages whose ``data.phase`` is PHASE; latency is this
process's wall clock at receipt minus ``data.sent_ns`` stamped by the publisher (same machine).
"""

from __future__ import annotations

import json
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from .common import write_json


def await_probe(bootstrap: str, topic: str, consumer: Consumer) -> None:
    """Produce one probe and read it back: only then is the fetch loop surely running."""
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, json.dumps({"data": {"phase": "probe"}}).encode())
    producer.flush(10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        msg = consumer.poll(0.1)
        if msg is not None and msg.error() is None:
            return
    raise TimeoutError(f"the probe on {topic} did not come back")


def main(bootstrap: str, topic: str, phase: str, count: int, ready: str, out: str,
         timeout: float) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{topic}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 5,
                         "isolation.level": "read_committed",
                         "fetch.error.backoff.ms": 5})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    await_probe(bootstrap, topic, consumer)
    write_json(ready, {"ready": True})
    latencies: list[int] = []
    deadline = time.monotonic() + timeout
    while len(latencies) < count and time.monotonic() < deadline:
        msg = consumer.poll(0.1)
        if msg is None or msg.error() is not None:
            continue
        received = time.time_ns()
        data = json.loads(msg.value())["data"]
        if data.get("phase") == phase:
            latencies.append(received - data["sent_ns"])
    consumer.close()
    write_json(out, {"latencies_ns": latencies, "expected": count})


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], int(a[3]), a[4], a[5], float(a[6]))
