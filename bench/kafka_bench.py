"""One Kafka publisher variant in a fresh interpreter.

    python -m bench.kafka_bench VARIANT BOOTSTRAP TOPIC PACED_COUNT MAX_COUNT WORKDIR OUT_FILE

``raw_envelope`` is the raw loop sending openalgo-events' envelope: with ``raw``, ``oae_memory``
and ``oae_spool`` it splits the cost into client, envelope, publisher and spool.
``oae_spool`` is the default (exactly-once), ``oae_spool_alo`` the same at-least-once
(``KAFKA_DELIVERY_GUARANTEE``): the price of the relay's transactions.

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
from typing import Any

from .common import (
    USER,
    disk_bytes,
    io_counters,
    memory_kb,
    order_data,
    paced,
    process_cpu,
    process_io,
    process_memory_kb,
    relay_pids,
    summary_us,
    tight,
    write_json,
)

VARIANTS = ("reference", "raw", "raw_envelope", "oae_spool", "oae_spool_alo", "oae_memory")
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
    """openalgo-events KAFKA mode: ``KafkaEventPublisher.publish_order_event``. With a spool
    directory the first publish starts a relay process (and its keeper); ``:memory:`` runs the
    relay on a thread of this process."""

    def __init__(self, bootstrap: str, topic: str, workdir: str, spool: bool,
                 guarantee: str = "exactly_once") -> None:
        from openalgo_events.config import Settings
        from openalgo_events.publisher import KafkaEventPublisher

        self.spool_path = os.path.join(workdir, "spool") if spool else ":memory:"
        settings = Settings.from_env({
            "ORDER_EVENT_MODE": "KAFKA", "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_SPOOL_PATH": self.spool_path, "KAFKA_PRODUCER_LINGER_MS": str(LINGER_MS),
            "KAFKA_PRODUCER_BATCH_SIZE": str(BATCH_BYTES), "KAFKA_PRODUCER_COMPRESSION": "none",
            "KAFKA_DELIVERY_GUARANTEE": guarantee,
        })
        self.publisher = KafkaEventPublisher(bootstrap, topic, settings=settings)

    def publish(self, data: dict[str, Any]) -> None:
        self.publisher.publish_order_event(USER, data.pop("symbol"), data.pop("action"),
                                           data.pop("orderid"), data.pop("mode"), **data)

    def confirm(self, timeout: float) -> bool:
        return self.publisher.flush(timeout) == 0

    def close(self) -> None:
        self.publisher.close(5)

    def helpers(self) -> list[int]:
        """The relay's and its keeper's pids (none for ``:memory:``)."""
        if self.spool_path == ":memory:":
            return []
        return [pid for pid in relay_pids(self.spool_path) if pid is not None]


VARIANT_GUARANTEE = {"oae_spool": "exactly_once", "oae_spool_alo": "at_least_once",
                     "oae_memory": "exactly_once"}


def build(variant: str, bootstrap: str, topic: str, workdir: str) -> Any:
    if variant == "reference":
        return Reference(bootstrap, topic, workdir)
    if variant == "raw":
        return Raw(bootstrap, topic, workdir)
    if variant == "raw_envelope":
        return RawEnvelope(bootstrap, topic, workdir)
    return OpenAlgoEvents(bootstrap, topic, workdir, spool=variant != "oae_memory",
                          guarantee=VARIANT_GUARANTEE[variant])


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
    helpers = pub.helpers() if isinstance(pub, OpenAlgoEvents) else []
    spool = pub.spool_path if isinstance(pub, OpenAlgoEvents) and helpers else None
    io_before = io_counters()
    helpers_io_before = sum(process_io(pid)["write_bytes"] for pid in helpers)
    disk_before = disk_bytes(spool) if spool else 0
    helpers_before = sum(process_cpu(pid) for pid in helpers)
    cpu_before, caller_before = time.process_time(), time.thread_time()
    started = time.perf_counter()
    max_ns = tight(max_count, lambda i: pub.publish(payloads[i]))
    publish_seconds = time.perf_counter() - started
    caller_cpu = time.thread_time() - caller_before
    max_ok = pub.confirm(60)
    confirmed_seconds = time.perf_counter() - started
    own_cpu = time.process_time() - cpu_before
    helpers_cpu = sum(process_cpu(pid) for pid in helpers) - helpers_before
    io_after = io_counters()
    helpers_io = sum(process_io(pid)["write_bytes"] for pid in helpers) - helpers_io_before
    disk_after = disk_bytes(spool) if spool else 0
    memory_end = memory_kb()
    relay_memory = process_memory_kb(helpers[0]) if helpers else None
    pub.close()

    write_json(out, {
        "variant": variant, "python": sys.version.split()[0],
        "confirmed": warm_ok and paced_ok and max_ok,
        "caller_paced": summary_us(paced_ns), "caller_max": summary_us(max_ns),
        "publish_rate": max_count / publish_seconds,
        "throughput": max_count / confirmed_seconds if max_ok else 0.0,
        # CPU per event: of the calling thread while it publishes; of the whole process
        # (librdkafka's threads, or the in-process relay's, included) until every event is
        # confirmed; and of the process with its relay and keeper processes (a spool's)
        "caller_cpu_us": caller_cpu / max_count * 1e6,
        "process_cpu_us": own_cpu / max_count * 1e6,
        "relay_cpu_us": helpers_cpu / max_count * 1e6,
        "all_cpu_us": (own_cpu + helpers_cpu) / max_count * 1e6,
        "memory_start": memory_start, "memory_end": memory_end, "relay_memory": relay_memory,
        "wchar_per_event": (io_after["wchar"] - io_before["wchar"]) / max_count,
        "write_bytes_per_event": (io_after["write_bytes"] - io_before["write_bytes"]) / max_count,
        "relay_write_bytes_per_event": helpers_io / max_count,
        "spool_growth_per_event": (disk_after - disk_before) / max_count,
    })


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], int(a[3]), int(a[4]), a[5], a[6])
