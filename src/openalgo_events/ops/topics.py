"""The package's topics with their documented settings (docs/topics.md), created idempotently.

``from_openalgo_order_events`` keeps 7 days, ``from_esb_order_events`` 24 hours (commands go
stale), its dead-letter topic 7 days (someone has to look at them); all are snappy-compressed,
capped at the envelope size limit, with 5 partitions, a replication factor of 3 and
``min.insync.replicas=2`` (so that the producer's ``acks=all`` means two copies and one broker
may be lost), both reduced on a cluster with fewer brokers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import Settings
from ..errors import OpenAlgoEventsError
from .broker import admin_client, cluster_metadata, kafka, kafka_admin

DAY_MS = 24 * 3600 * 1000
PARTITIONS = 5
REPLICATION_FACTOR = 3
MIN_INSYNC_REPLICAS = 2


class TopicError(OpenAlgoEventsError):
    """The broker refused to create a topic for a reason other than its existence."""


@dataclass(frozen=True)
class TopicPlan:
    """One topic to create: name, sizing and topic-level configs."""

    name: str
    purpose: str
    partitions: int
    replication_factor: int
    configs: dict[str, str] = field(default_factory=dict)


def planned_topics(settings: Settings, partitions: int = PARTITIONS,
                   replication_factor: int = REPLICATION_FACTOR) -> list[TopicPlan]:
    """The order, ESB and dead-letter topics with their documented settings."""

    def configs(retention_ms: int) -> dict[str, str]:
        return {"retention.ms": str(retention_ms), "compression.type": "snappy",
                "max.message.bytes": str(settings.max_message_bytes),
                "min.insync.replicas": str(MIN_INSYNC_REPLICAS)}

    return [
        TopicPlan(settings.order_events_topic, "events OpenAlgo publishes", partitions,
                  replication_factor, configs(7 * DAY_MS)),
        TopicPlan(settings.esb_events_topic, "commands external systems send", partitions,
                  replication_factor, configs(DAY_MS)),
        TopicPlan(settings.dlq_topic, "inbound messages that could not be handled", partitions,
                  replication_factor, configs(7 * DAY_MS)),
    ]


@dataclass(frozen=True)
class CreateResult:
    name: str
    outcome: str  # "created" or "already exists"
    replication_factor: int


def create_topics(settings: Settings, plans: list[TopicPlan], timeout: float = 10.0,
                  warn: Callable[[str], None] = lambda _: None) -> list[CreateResult]:
    """Create every planned topic; one that already exists counts as success."""
    ck, ka = kafka(), kafka_admin()
    admin = admin_client(settings)
    brokers = len(cluster_metadata(settings, timeout, admin).brokers)
    new_topics = []
    factors: dict[str, int] = {}
    for plan in plans:
        factor = plan.replication_factor
        if brokers and factor > brokers:
            warn(f"{plan.name}: replication factor {factor} capped to {brokers}, the number of "
                 "brokers in this cluster (a production cluster should have at least 3)")
            factor = brokers
        factors[plan.name] = factor
        topic_configs = dict(plan.configs)
        min_isr = int(topic_configs.get("min.insync.replicas", "1"))
        if min_isr > 1 and min_isr >= factor:
            # With as many required copies as replicas, losing any one broker stops every
            # write; keep one broker's worth of slack (1 on a 1- or 2-broker cluster).
            topic_configs["min.insync.replicas"] = str(max(1, factor - 1))
        new_topics.append(ka.NewTopic(plan.name, num_partitions=plan.partitions,
                                      replication_factor=factor, config=topic_configs))
    results = []
    for name, future in admin.create_topics(new_topics, request_timeout=timeout).items():
        try:
            future.result(timeout)
            outcome = "created"
        except ck.KafkaException as exc:
            error = exc.args[0]
            if error.code() != ck.KafkaError.TOPIC_ALREADY_EXISTS:
                raise TopicError(f"could not create topic {name}: {error.str()}") from exc
            outcome = "already exists"
        results.append(CreateResult(name, outcome, factors[name]))
    return results


@dataclass(frozen=True)
class PartitionInfo:
    id: int
    leader: int
    replicas: list[int]
    isrs: list[int]


@dataclass(frozen=True)
class TopicInfo:
    name: str
    exists: bool
    partitions: list[PartitionInfo] = field(default_factory=list)
    configs: dict[str, tuple[str | None, bool]] = field(default_factory=dict)  # value, default?


def describe_topics(settings: Settings, names: list[str], timeout: float = 10.0) -> list[TopicInfo]:
    """Partitions, replicas and configs of each named topic (missing ones say so)."""
    ka = kafka_admin()
    admin = admin_client(settings)
    metadata = cluster_metadata(settings, timeout, admin)
    infos = []
    for name in names:
        topic = metadata.topics.get(name)
        if topic is None or topic.error is not None:
            infos.append(TopicInfo(name, exists=False))
            continue
        partitions = [PartitionInfo(p.id, p.leader, list(p.replicas), list(p.isrs))
                      for p in sorted(topic.partitions.values(), key=lambda p: p.id)]
        resource = ka.ConfigResource(ka.ConfigResource.Type.TOPIC, name)
        configs: dict[str, tuple[str | None, bool]] = {}
        for future in admin.describe_configs([resource], request_timeout=timeout).values():
            entries: dict[str, Any] = future.result(timeout)
            for key, entry in sorted(entries.items()):
                value = None if entry.is_sensitive else entry.value
                configs[key] = (value, bool(entry.is_default))
        infos.append(TopicInfo(name, True, partitions, configs))
    return infos
