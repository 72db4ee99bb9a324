"""Prometheus metrics, read from the publisher's own counters at scrape time.

Nothing is counted twice: the publisher keeps plain counters (``openalgo_events.stats``) and a
custom collector turns a snapshot of them, plus the health gauges, into metric families. The
delivery side (delivered, rebuilds, delivery latency, rejected, shed) is counted in the relay
process; its status carries its counters, which the app's collector adds to its own, so one
scrape of the app's port tells the whole story (the relay's own ``/metrics`` shows its part).
Each Flask app gets its own ``CollectorRegistry``, so two apps (or two tests) never collide.

>>> registry = metrics_registry(lambda: publisher)  # doctest: +SKIP
>>> generate_latest(registry)  # doctest: +SKIP
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..config import Mode
from ..errors import require
from ..stats import BUCKETS, Histogram, Labels, Stats

if TYPE_CHECKING:
    from ..publisher import EventPublisher

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
    "quarantined": ("quarantined", "Journal frames the relay could not read (a bad CRC, or "
                    "metadata that is not a record's), set aside and counted.", ()),
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
            health = publisher.health()
            kafka = _kafka_health(health)
            yield from stat_families(self._pc, _with_relay(publisher.stats.snapshot(), kafka))
            yield from self._mode(publisher, health)
            if kafka is not None:
                yield from kafka_gauges(self._pc, kafka)
        consumer = self._consumer()
        if consumer is not None:
            yield from self._consumer_metrics(consumer.health())

    def _mode(self, publisher: EventPublisher, health: Mapping[str, Any]) -> Iterator[Any]:
        pc = self._pc
        current = publisher.mode
        if current is None:
            return
        family = pc.GaugeMetricFamily(f"{PREFIX}_mode", "1 for the routing mode in force.",
                                      labels=["mode"])
        for mode in Mode:
            family.add_metric([mode.value], 1.0 if mode is current else 0.0)
        yield family
        yield pc.GaugeMetricFamily(f"{PREFIX}_rollout_percent",
                                   "Share of users (by hash of user id) routed to Kafka.",
                                   value=float(health.get("rollout_percent", 100)))

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


def _kafka_health(health: Mapping[str, Any]) -> Mapping[str, Any] | None:
    found = health.get("transports", {}).get("kafka") or (
        health if health.get("transport") == "kafka" else None)
    return found if isinstance(found, Mapping) else None


def _with_relay(snapshot: dict[str, Any], kafka: Mapping[str, Any] | None) -> dict[str, Any]:
    """The app's snapshot plus the relay's counters and histograms (from its status)."""
    if not kafka or not kafka.get("relay_stats"):
        return snapshot
    theirs = Stats.imported(kafka["relay_stats"])
    counters = dict(snapshot["counters"])
    for key, value in theirs["counters"].items():
        counters[key] = counters.get(key, 0) + value
    histograms = {(name, labels, "app"): h for (name, labels), h in
                  snapshot["histograms"].items()}
    histograms.update({(name, labels, "relay"): h for (name, labels), h in
                       theirs["histograms"].items()})
    return {"counters": counters, "histograms": histograms}


def stat_families(pc: Any, snapshot: Mapping[str, Any]) -> Iterator[Any]:
    """Counter and histogram families of a ``Stats`` snapshot."""
    for stat, (name, text, labels) in COUNTERS.items():
        family = pc.CounterMetricFamily(f"{PREFIX}_{name}", text, labels=list(labels))
        for values, total in sorted(_by_labels(snapshot["counters"], stat, labels).items()):
            family.add_metric(list(values), total)
        yield family
    for stat, (name, text) in HISTOGRAMS.items():
        family = pc.HistogramMetricFamily(f"{PREFIX}_{name}", text)
        hist = Histogram()
        for key, part in snapshot["histograms"].items():
            if key[0] == stat:
                hist.counts = [a + b for a, b in zip(hist.counts, part.counts, strict=True)]
                hist.count += part.count
                hist.total += part.total
        family.add_metric([], _buckets(hist), hist.total)
        yield family


def kafka_gauges(pc: Any, kafka: Mapping[str, Any]) -> Iterator[Any]:
    """The spool's, the relay's and the brokers' gauges, from a Kafka health document."""
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
    yield pc.GaugeMetricFamily(f"{PREFIX}_relay_running",
                               "1 while a relay process holds the spool.",
                               value=1.0 if kafka.get("relay_running") else 0.0)


class _RelayCollector:
    """The relay process's own ``/metrics``: its counters and the spool's gauges."""

    def __init__(self, relay: Any) -> None:
        self._relay = relay
        self._pc: Any = require("prometheus_client.core", "metrics")

    def collect(self) -> Iterator[Any]:
        yield from stat_families(self._pc, self._relay.stats.snapshot())
        yield from kafka_gauges(self._pc, {**self._relay.status(), "relay_running": True})


def relay_registry(relay: Any) -> Any:
    """A ``CollectorRegistry`` for a relay process (``relay.process.Relay``)."""
    registry = require("prometheus_client", "metrics").CollectorRegistry()  # type: ignore[attr-defined]
    registry.register(_RelayCollector(relay))
    return registry


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
