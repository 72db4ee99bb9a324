"""Prometheus metrics, read from the publisher's own counters at scrape time.

Nothing is counted twice: the publisher keeps plain counters (``openalgo_events.stats``) and a
custom collector turns a snapshot of them, plus the health gauges, into metric families. Each
Flask app gets its own ``CollectorRegistry``, so two apps (or two tests) never collide.

>>> registry = metrics_registry(lambda: publisher)  # doctest: +SKIP
>>> generate_latest(registry)  # doctest: +SKIP
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..config import Mode
from ..errors import require
from ..publisher import EventPublisher
from ..stats import BUCKETS, Histogram, Labels

PREFIX = "openalgo_events"

# Stats counter -> (metric name without _total, help, label names).
COUNTERS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "published": ("published", "Events accepted for sending, by event type and transport.",
                  ("event_type", "transport")),
    "delivered": ("delivered", "Events confirmed delivered (Kafka ack, Socket.IO emit).",
                  ("event_type", "transport")),
    "failed": ("failed", "Failed publishes and delivery attempts (Kafka ones are retried).",
               ("event_type", "transport")),
    "shed": ("shed", "LOW and MEDIUM events dropped because the spool was over its limit.",
             ("event_type",)),
    "not_stored": ("not_stored", "Events refused because the spool could not store them (disk "
                   "full, directory not writable); publish raised EventNotStoredError.",
                   ("event_type",)),
    "rejected": ("rejected", "Events Kafka refused for good, set aside in the spool "
                 "('openalgo-events spool rejected').", ("event_type", "transport")),
    "quarantined": ("quarantined", "Stored records the relay could not read, set aside as "
                    "rejected.", ()),
    "producer_rebuilds": ("producer_rebuilds",
                          "Kafka producers discarded and rebuilt to resend pending events.", ()),
}
HISTOGRAMS = {
    "publish_latency": ("publish_latency_seconds",
                        "Time a publish call took (validation excluded): the order path's cost."),
    "delivery_latency": ("delivery_latency_seconds",
                         "Time from publish to the broker's delivery report."),
}


def _by_labels(counters: Mapping[tuple[str, Labels], int], stat: str,
               names: tuple[str, ...]) -> dict[tuple[str, ...], int]:
    """Sum one counter over the label names a metric keeps (absent labels read as '')."""
    totals: dict[tuple[str, ...], int] = defaultdict(int)
    for (name, labels), value in counters.items():
        if name == stat:
            found = dict(labels)
            totals[tuple(found.get(label, "") for label in names)] += value
    return totals


def _buckets(hist: Histogram) -> list[tuple[str, float]]:
    running, out = 0, []
    for bound, count in zip(BUCKETS, hist.counts, strict=False):
        running += count
        out.append((repr(bound), float(running)))
    out.append(("+Inf", float(hist.count)))
    return out


class EventsCollector:
    """A prometheus_client collector over one publisher (and the inbound consumer, if any)."""

    def __init__(self, publisher: Callable[[], EventPublisher | None],
                 consumer: Callable[[], Any] = lambda: None) -> None:
        self._publisher = publisher
        self._consumer = consumer
        self._pc: Any = require("prometheus_client.core", "metrics")

    def collect(self) -> Iterator[Any]:
        publisher = self._publisher()
        if publisher is not None:
            yield from self._stats(publisher)
            yield from self._health(publisher)
        consumer = self._consumer()
        if consumer is not None:
            yield from self._consumer_metrics(consumer.health())

    def _stats(self, publisher: EventPublisher) -> Iterator[Any]:
        pc = self._pc
        snapshot = publisher.stats.snapshot()
        for stat, (name, text, labels) in COUNTERS.items():
            family = pc.CounterMetricFamily(f"{PREFIX}_{name}", text, labels=list(labels))
            for values, total in sorted(_by_labels(snapshot["counters"], stat, labels).items()):
                family.add_metric(list(values), total)
            yield family
        for stat, (name, text) in HISTOGRAMS.items():
            family = pc.HistogramMetricFamily(f"{PREFIX}_{name}", text)
            hist = Histogram()
            for (key, _labels), part in snapshot["histograms"].items():
                if key == stat:
                    hist.counts = [a + b for a, b in zip(hist.counts, part.counts, strict=True)]
                    hist.count += part.count
                    hist.total += part.total
            family.add_metric([], _buckets(hist), hist.total)
            yield family

    def _health(self, publisher: EventPublisher) -> Iterator[Any]:
        pc = self._pc
        health = publisher.health()
        current = publisher.mode
        if current is not None:
            family = pc.GaugeMetricFamily(f"{PREFIX}_mode", "1 for the routing mode in force.",
                                          labels=["mode"])
            for mode in Mode:
                family.add_metric([mode.value], 1.0 if mode is current else 0.0)
            yield family
            yield pc.GaugeMetricFamily(f"{PREFIX}_rollout_percent",
                                       "Share of users (by hash of user id) routed to Kafka.",
                                       value=float(health.get("rollout_percent", 100)))
        kafka = health.get("transports", {}).get("kafka") or (
            health if health.get("transport") == "kafka" else None)
        if kafka is None:
            return
        yield pc.GaugeMetricFamily(f"{PREFIX}_spool_depth",
                                   "Events in the spool not yet confirmed by Kafka.",
                                   value=float(kafka.get("spool_depth") or 0))
        yield pc.GaugeMetricFamily(f"{PREFIX}_spool_oldest_pending_age_seconds",
                                   "Age of the oldest event waiting for Kafka (0 when none).",
                                   value=float(kafka.get("oldest_pending_age_seconds") or 0.0))
        reachable = kafka.get("broker_reachable")
        yield pc.GaugeMetricFamily(f"{PREFIX}_broker_reachable",
                                   "1 when the Kafka brokers answer, 0 when they do not.",
                                   value=0.0 if reachable is False else 1.0)

    def _consumer_metrics(self, health: Mapping[str, Any]) -> Iterator[Any]:
        pc = self._pc
        lag = pc.GaugeMetricFamily(f"{PREFIX}_consumer_lag",
                                   "Inbound messages not yet consumed, by partition.",
                                   labels=["partition"])
        for partition, behind in sorted((health.get("lag") or {}).items()):
            if behind is not None:  # None: not measured yet
                lag.add_metric([str(partition)], float(behind))
        yield lag
        yield pc.CounterMetricFamily(f"{PREFIX}_dlq", "Inbound messages sent to the dead-letter "
                                     "topic.", value=float(health.get("dead_lettered", 0)))


def metrics_registry(publisher: Callable[[], EventPublisher | None],
                     consumer: Callable[[], Any] = lambda: None) -> Any:
    """A fresh ``CollectorRegistry`` holding only this package's collector."""
    registry = require("prometheus_client", "metrics").CollectorRegistry()  # type: ignore[attr-defined]
    registry.register(EventsCollector(publisher, consumer))
    return registry


def exposition(registry: Any) -> tuple[bytes, str]:
    """The registry in the Prometheus text format, and its content type."""
    pc: Any = require("prometheus_client", "metrics")
    return pc.generate_latest(registry), pc.CONTENT_TYPE_LATEST
