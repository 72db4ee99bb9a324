"""One Kafka publisher variant in a fresh interpreter.

    python -m bench.kafka_bench VARIANT BOOTSTRAP TOPIC PACED_COUNT MAX_COUNT WORKDIR OUT_FILE

``raw_envelope`` is the raw loop sending openalgo-events' envelope: with ``raw``, ``oae_memory``
and ``oae_spool`` it splits the cost into client, envelope, publisher and spool.

Phases, all on one topic: 20 warm-up events (connection and metadata, confirmed); PACED_COUNT
events at 100/s (caller time; a separate consumer process records end-to-end); MAX_COUNT events
in a tight loop, then wait until every one is confirmed delivered (caller time at max rate and
throughput with delivery confirmed). Memory and write counters are read from /proc/self.

Every variant uses the design's producer settings: acks=all, linger 10 ms, batch 16384 bytes,
no compression (kafka-python 2.0.2 has no snappy codec without python-snappy).
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from .common import (
    USER,
    io_counters,
    memory_kb,
    order_data,
    paced,
    summary_us,
    tight,
    write_json,
)

VARIANTS = ("reference", "raw", "raw_envelope", "oae_spool", "oae_memory")
LINGER_MS = 10
BATCH_BYTES = 16384


class Reference:
    """The design's KafkaEventPublisher (kafka-python), its settings and message, verbatim."""

    def __init__(self, bootstrap: str, topic: str, workdir: str) -> None:
        from kafka import KafkaProducer

        self.topic = topic
        self.producer = KafkaProducer(
            bootstrap_servers=bootstrap.split(","),
            value_serializer=lambda v: json.dumps(v).encode("utf-8"),
            batch_size=BATCH_BYTES, linger_ms=LINGER_MS, acks="all",
        )
        self.futures: list[Any] = []  # kept only to confirm delivery at the end

    def publish(self, data: dict[str, Any]) -> None:
        message = {"event_type": "order_event",
                   "timestamp": datetime.utcnow().isoformat() + "Z",
                   "user_id": USER, "source": "openalgo", "data": data}
        self.futures.append(self.producer.send(self.topic, key=USER.encode("utf-8"),
                                               value=message))

    def confirm(self, timeout: float) -> bool:
        self.producer.flush(timeout)
        ok = all(f.is_done and f.succeeded() for f in self.futures)
        self.futures = []
        return ok

    def close(self) -> None:
        self.producer.close(5)


class Raw:
    """The floor: confluent-kafka produce + poll(0), the same message built by hand."""

    def __init__(self, bootstrap: str, topic: str, workdir: str) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self.producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                                  "linger.ms": LINGER_MS, "batch.size": BATCH_BYTES,
                                  "compression.type": "none"})
        self.sent = self.delivered = self.failed = 0

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failed += 1

    def publish(self, data: dict[str, Any]) -> None:
        message = {"event_type": "order_event",
                   "timestamp": datetime.now().astimezone().isoformat(),
                   "user_id": USER, "source": "openalgo", "data": data}
        value = json.dumps(message).encode()
        while True:
            try:
                self.producer.produce(self.topic, value, USER.encode(),
                                      on_delivery=self._on_delivery)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.producer.poll(0)
        self.sent += 1

    def confirm(self, timeout: float) -> bool:
        self.producer.flush(timeout)
        return self.delivered == self.sent and not self.failed

    def close(self) -> None:
        self.producer.flush(5)


class RawEnvelope(Raw):
    """The raw producer loop sending openalgo-events' validated envelope (value, key, headers):
    the envelope's share of the cost, without the spool and the relay."""

    def __init__(self, bootstrap: str, topic: str, workdir: str) -> None:
        from openalgo_events.publisher import EventPublisher
        from openalgo_events.testing import MemoryTransport

        super().__init__(bootstrap, topic, workdir)
        self.builder = EventPublisher(MemoryTransport())

    def publish(self, data: dict[str, Any]) -> None:
        envelope = self.builder.build("order_event", USER, data)
        while True:
            try:
                self.producer.produce(self.topic, envelope.value, envelope.key,
                                      headers=envelope.headers(), on_delivery=self._on_delivery)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.producer.poll(0)
        self.sent += 1


class OpenAlgoEvents:
    """openalgo-events KAFKA mode: ``KafkaEventPublisher.publish_order_event``."""

    def __init__(self, bootstrap: str, topic: str, workdir: str, spool: bool) -> None:
        from openalgo_events.config import Settings
        from openalgo_events.publisher import KafkaEventPublisher

        self.spool_path = os.path.join(workdir, "spool.db") if spool else ":memory:"
        settings = Settings.from_env({
            "ORDER_EVENT_MODE": "KAFKA", "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_SPOOL_PATH": self.spool_path, "KAFKA_PRODUCER_LINGER_MS": str(LINGER_MS),
            "KAFKA_PRODUCER_BATCH_SIZE": str(BATCH_BYTES), "KAFKA_PRODUCER_COMPRESSION": "none",
        })
        self.publisher = KafkaEventPublisher(bootstrap, topic, settings=settings)

    def publish(self, data: dict[str, Any]) -> None:
        self.publisher.publish_order_event(USER, data.pop("symbol"), data.pop("action"),
                                           data.pop("orderid"), data.pop("mode"), **data)

    def confirm(self, timeout: float) -> bool:
        return self.publisher.flush(timeout) == 0

    def close(self) -> None:
        self.publisher.close(5)

    def spool_bytes(self) -> int:
        if self.spool_path == ":memory:":
            return 0
        return sum(p.stat().st_size for p in Path(self.spool_path).parent.glob("spool.db*")
                   if p.suffix != ".lock")


def build(variant: str, bootstrap: str, topic: str, workdir: str) -> Any:
    if variant == "reference":
        return Reference(bootstrap, topic, workdir)
    if variant == "raw":
        return Raw(bootstrap, topic, workdir)
    if variant == "raw_envelope":
        return RawEnvelope(bootstrap, topic, workdir)
    return OpenAlgoEvents(bootstrap, topic, workdir, spool=variant == "oae_spool")


def main(variant: str, bootstrap: str, topic: str, paced_count: int, max_count: int,
         workdir: str, out: str) -> None:
    memory_start = memory_kb()
    pub = build(variant, bootstrap, topic, workdir)
    for i in range(20):
        pub.publish(order_data(i, "warm"))
    warm_ok = pub.confirm(10)

    paced_ns = paced(100, paced_count, lambda i: pub.publish(order_data(i, "paced")))
    paced_ok = pub.confirm(10)

    payloads = [order_data(i, "max") for i in range(max_count)]  # built before the clock starts
    io_before = io_counters()
    disk_before = pub.spool_bytes() if isinstance(pub, OpenAlgoEvents) else 0
    cpu_before, caller_before = time.process_time(), time.thread_time()
    started = time.perf_counter()
    max_ns = tight(max_count, lambda i: pub.publish(payloads[i]))
    publish_seconds = time.perf_counter() - started
    caller_cpu = time.thread_time() - caller_before
    max_ok = pub.confirm(60)
    confirmed_seconds = time.perf_counter() - started
    process_cpu = time.process_time() - cpu_before
    io_after = io_counters()
    disk_after = pub.spool_bytes() if isinstance(pub, OpenAlgoEvents) else 0
    memory_end = memory_kb()
    pub.close()

    write_json(out, {
        "variant": variant, "python": sys.version.split()[0],
        "confirmed": warm_ok and paced_ok and max_ok,
        "caller_paced": summary_us(paced_ns), "caller_max": summary_us(max_ns),
        "publish_rate": max_count / publish_seconds,
        "throughput": max_count / confirmed_seconds if max_ok else 0.0,
        # CPU per event: of the calling thread while it publishes, and of the whole process
        # (relay and librdkafka threads included) until every event is confirmed
        "caller_cpu_us": caller_cpu / max_count * 1e6,
        "process_cpu_us": process_cpu / max_count * 1e6,
        "memory_start": memory_start, "memory_end": memory_end,
        "wchar_per_event": (io_after["wchar"] - io_before["wchar"]) / max_count,
        "write_bytes_per_event": (io_after["write_bytes"] - io_before["write_bytes"]) / max_count,
        "spool_growth_per_event": (disk_after - disk_before) / max_count,
    })


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], int(a[3]), int(a[4]), a[5], a[6])
