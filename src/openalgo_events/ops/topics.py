"""The package's topics with their documented settings (docs/topics.md), created idempotently.

``from_openalgo_order_events`` keeps 7 days, ``from_esb_order_events`` 24 hours (commands go
stale), its dead-letter topic 7 days (someone has to look at them); all are snappy-compressed,
capped at the envelope size limit, with 5 partitions, a replication factor of 3 and
``min.insync.replicas=2`` (so that the producer's ``acks=all`` means two copies and one broker
may be lost), both reduced on a cluster with fewer brokers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._words import plural
from ..config import Settings
from ..errors import OpenAlgoEventsError
from ..relay import positions
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
        positions_plan(settings, replication_factor),
    ]


def positions_plan(settings: Settings, replication_factor: int = REPLICATION_FACTOR) -> TopicPlan:
    """The relay's positions topic: compacted (one record per journal, the latest kept), one
    partition (a handful of small records per spool)."""
    return TopicPlan(settings.relay_positions_topic,
                     "each journal's position, committed with its events (exactly-once)", 1,
                     replication_factor,
                     {**positions.TOPIC_CONFIG,
                      "min.insync.replicas": str(positions.MIN_INSYNC_REPLICAS)})


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

    @property
    def replication_factor(self) -> int:
        """Replicas of its partitions (the largest count, should they differ)."""
        return max((len(p.replicas) for p in self.partitions), default=0)


@dataclass(frozen=True)
class CreateResult:
    """One planned topic after ``create_topics``: whether it was made or already there, the
    replication factor asked for (after capping), and the topic as the cluster has it."""

    name: str
    outcome: str  # "created" or "already exists"
    replication_factor: int
    found: TopicInfo | None = None  # read back; None when the metadata did not show it in time
    asked: dict[str, str] = field(default_factory=dict)  # the configs sent, after capping


def create_topics(settings: Settings, plans: list[TopicPlan], timeout: float = 10.0,
                  warn: Callable[[str], None] = lambda _: None) -> list[CreateResult]:
    """Create every planned topic (one that already exists counts as success), then read each
    back from the cluster: what it reports is what the caller shows."""
    ck, ka = kafka(), kafka_admin()
    admin = admin_client(settings)
    brokers = len(cluster_metadata(settings, timeout, admin).brokers)
    new_topics = []
    factors: dict[str, int] = {}
    asked: dict[str, dict[str, str]] = {}
    for plan in plans:
        factor = min(plan.replication_factor, brokers or plan.replication_factor)
        factors[plan.name] = factor
        topic_configs = dict(plan.configs)
        min_isr = int(topic_configs.get("min.insync.replicas", "1"))
        lowered = ""
        if min_isr > 1 and min_isr >= factor:
            # With as many required copies as replicas, losing any one broker stops every
            # write; keep one broker's worth of slack (1 on a 1- or 2-broker cluster).
            topic_configs["min.insync.replicas"] = str(max(1, factor - 1))
            lowered = f"min.insync.replicas {min_isr} to {topic_configs['min.insync.replicas']}"
        if factor < plan.replication_factor:
            warn(f"{plan.name}: replication factor {plan.replication_factor} capped to "
                 f"{factor}, the number of brokers in this cluster"
                 + (f", and {lowered}" if lowered else "")
                 + " (a production cluster should have at least 3 brokers)")
        elif lowered:
            warn(f"{plan.name}: {lowered}, below the replication factor {factor}, so that "
                 "writes go on with one broker down")
        asked[plan.name] = topic_configs
        new_topics.append(ka.NewTopic(plan.name, num_partitions=plan.partitions,
                                      replication_factor=factor, config=topic_configs))
    outcomes = {}
    for name, future in admin.create_topics(new_topics, request_timeout=timeout).items():
        try:
            future.result(timeout)
            outcomes[name] = "created"
        except ck.KafkaException as exc:
            error = exc.args[0]
            if error.code() != ck.KafkaError.TOPIC_ALREADY_EXISTS:
                raise TopicError(f"could not create topic {name}: {error.str()}") from exc
            outcomes[name] = "already exists"
    found = read_back(settings, [plan.name for plan in plans], timeout, admin)
    results = []
    for plan in plans:
        info = found.get(plan.name)
        result = CreateResult(plan.name, outcomes[plan.name], factors[plan.name],
                              info if info is not None and info.exists else None,
                              asked[plan.name])
        differences = _differences(result, plan)
        if result.outcome == "already exists" and differences:
            warn(f"{plan.name} already exists with {', and '.join(differences)}; "
                 "'topics create' leaves an existing topic as it is")
        results.append(result)
    return results


def _differences(result: CreateResult, plan: TopicPlan) -> list[str]:
    """How the topic found differs from the one asked for, e.g. '5 partitions, not 12'."""
    info = result.found
    if info is None:
        return []
    differences = []
    if len(info.partitions) != plan.partitions:
        differences.append(f"{plural(len(info.partitions), 'partition')}, not {plan.partitions}")
    if info.replication_factor != result.replication_factor:
        differences.append(f"replication factor {info.replication_factor}, not "
                           f"{result.replication_factor}")
    for key, wanted in result.asked.items():
        value = info.configs.get(key, (None, False))[0]
        if value != wanted:
            differences.append(f"{key}={value}, not {wanted}")
    return differences


def describe_line(result: CreateResult) -> str:
    """``name: outcome (N partitions, replication factor R, key=value...)`` with what the
    cluster reports for the configs ``topics create`` sets."""
    info = result.found
    if info is None:
        return (f"{result.name}: {result.outcome} (not in the cluster's metadata yet; "
                "'openalgo-events topics describe' shows it once it is)")
    configs = ", ".join(f"{key}={info.configs.get(key, ('(not reported)', False))[0]}"
                        for key in result.asked)
    return (f"{result.name}: {result.outcome} ({plural(len(info.partitions), 'partition')}, "
            f"replication factor {info.replication_factor}, {configs})")


def describe_topics(settings: Settings, names: list[str], timeout: float = 10.0) -> list[TopicInfo]:
    """Partitions, replicas and configs of each named topic (missing ones say so)."""
    admin = admin_client(settings)
    metadata = cluster_metadata(settings, timeout, admin)
    return [_describe(admin, metadata, name, timeout) for name in names]


def read_back(settings: Settings, names: list[str], timeout: float = 10.0,
              admin: Any = None) -> dict[str, TopicInfo]:
    """Each named topic as the cluster has it, once its metadata lists every one with a leader
    for each partition and its configs answer (a cluster acknowledges CreateTopics before all
    of its brokers know the topic), or as it was when ``timeout`` ran out."""
    ck = kafka()
    admin = admin_client(settings) if admin is None else admin
    deadline = time.monotonic() + timeout
    while True:
        metadata = cluster_metadata(settings, timeout, admin)
        try:
            infos = {name: _describe(admin, metadata, name, timeout) for name in names}
        except ck.KafkaException:
            infos = {}  # a broker that does not know the new topic yet: ask again
        if (infos and all(info.exists and all(p.leader >= 0 for p in info.partitions)
                          for info in infos.values())) or time.monotonic() >= deadline:
            return infos
        time.sleep(0.1)


def _describe(admin: Any, metadata: Any, name: str, timeout: float) -> TopicInfo:
    ka = kafka_admin()
    topic = metadata.topics.get(name)
    if topic is None or topic.error is not None:
        return TopicInfo(name, exists=False)
    partitions = [PartitionInfo(p.id, p.leader, list(p.replicas), list(p.isrs))
                  for p in sorted(topic.partitions.values(), key=lambda p: p.id)]
    resource = ka.ConfigResource(ka.ConfigResource.Type.TOPIC, name)
    configs: dict[str, tuple[str | None, bool]] = {}
    for future in admin.describe_configs([resource], request_timeout=timeout).values():
        entries: dict[str, Any] = future.result(timeout)
        for key, entry in sorted(entries.items()):
            value = None if entry.is_sensitive else entry.value
            configs[key] = (value, bool(entry.is_default))
    return TopicInfo(name, True, partitions, configs)
