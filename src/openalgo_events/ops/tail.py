"""Following a topic live without joining a consumer group (nothing is committed).

Every partition is assigned explicitly; the starting offsets are resolved before ``on_ready``
is called, so an event produced after that is always seen, and, from the end, none produced
before it is shown.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .._words import plural
from ..config import Settings
from ..envelope import parse_timestamp
from ..spool import REPLAY_HEADER
from .broker import client_config, cluster_metadata, kafka
from .topics import TopicError
from .when import format_when

DETAIL_FIELDS = ("orderid", "symbol", "action", "quantity", "price", "status", "order_status",
                 "event", "trigger_id", "count", "message", "mode")


@dataclass(frozen=True)
class Tailed:
    """One record read from the topic; ``envelope`` is None when the value is not one."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    envelope: dict[str, Any] | None

    @property
    def replayed(self) -> bool:
        return self.headers.get(REPLAY_HEADER) == b"1"


@dataclass(frozen=True)
class TailFilter:
    """Which records to show: empty sets mean everything."""

    event_types: frozenset[str] = field(default_factory=frozenset)
    users: frozenset[str] = field(default_factory=frozenset)

    def matches(self, record: Tailed) -> bool:
        doc = record.envelope
        if doc is None:
            return not (self.event_types or self.users)
        if self.event_types and doc.get("event_type") not in self.event_types:
            return False
        return not self.users or doc.get("user_id") in self.users


def follow(settings: Settings, topic: str, *, start: str | float = "end",
           timeout: float | None = None, max_messages: int | None = None,
           only: TailFilter | None = None,
           on_ready: Callable[[int], None] = lambda _: None) -> Iterator[Tailed]:
    """Yield matching records of ``topic`` from ``start`` ("end", "beginning" or unix seconds)
    until ``max_messages`` were yielded or ``timeout`` seconds passed."""
    ck = kafka()
    only = only or TailFilter()
    consumer = ck.Consumer({**client_config(settings),
                            "group.id": f"openalgo-events-tail-{uuid.uuid4().hex[:12]}",
                            "enable.auto.commit": False, "enable.auto.offset.store": False,
                            "enable.partition.eof": True,
                            # what a transaction aborted (a relay fenced mid-way) never shows
                            "isolation.level": "read_committed"})
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        metadata = cluster_metadata(settings, min(timeout or 10.0, 10.0), consumer)
        if topic not in metadata.topics:
            # Clusters often refuse auto-creation: only a hint that works is given.
            if topic == settings.order_events_topic:
                raise TopicError(f"topic {topic} does not exist; create it with "
                                 "'openalgo-events topics create'")
            raise TopicError(f"topic {topic} does not exist; check --topic (the order topic "
                             f"is {settings.order_events_topic}, KAFKA_ORDER_EVENTS_TOPIC)")
        partitions = sorted(metadata.topics[topic].partitions)
        consumer.assign(_start_offsets(ck, consumer, topic, partitions, start))
        early = _skip_to_end(ck, consumer, partitions, deadline) if start == "end" else []
        on_ready(len(partitions))
        since_ms = int(start * 1000) if isinstance(start, float | int) else -1
        shown = 0
        while max_messages is None or shown < max_messages:
            wait = 0.5 if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                return
            msg = early.pop(0) if early else consumer.poll(min(wait, 0.5))
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().fatal():
                    raise TopicError(f"reading {topic} failed: {msg.error().str()}")
                continue  # partition EOF and transient errors: librdkafka retries
            record = _record(msg)
            if record.timestamp_ms < since_ms:
                continue  # a broker may answer offsets_for_times coarsely (Tansu: earliest)
            if only.matches(record):
                shown += 1
                yield record
    finally:
        consumer.close()


def _skip_to_end(ck: Any, consumer: Any, partitions: list[int],
                 deadline: float | None) -> list[Any]:
    """Read past what was on each partition when the tail began, up to the end its fetches
    report, and return the records that came after that end meanwhile.

    A broker's answer to "the latest offset" may lag its log: the dev broker (Tansu) gives the
    start of the partition's last batch plus one, so starting there would reprint that batch.
    A fetch reports the true end (librdkafka's partition EOF); records before it were there
    already. Bounded by 10 s (or ``deadline``): a partition without a leader does not hold
    the tail up.
    """
    until = time.monotonic() + 10.0 if deadline is None else min(deadline,
                                                                   time.monotonic() + 10.0)
    waiting, after = set(partitions), []
    while waiting and time.monotonic() < until:
        msg = consumer.poll(min(0.5, max(0.0, until - time.monotonic())))
        if msg is None:
            continue
        error = msg.error()
        if error is not None and error.code() == ck.KafkaError._PARTITION_EOF:
            waiting.discard(msg.partition())
        elif msg.partition() not in waiting:
            after.append(msg)  # produced after that partition's end was reached: new
    return after


def _start_offsets(ck: Any, consumer: Any, topic: str, partitions: list[int],
                   start: str | float) -> list[Any]:
    if start == "beginning":
        return [ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in partitions]
    ends = {p: consumer.get_watermark_offsets(ck.TopicPartition(topic, p), timeout=10)[1]
            for p in partitions}
    if start == "end":
        return [ck.TopicPartition(topic, p, ends[p]) for p in partitions]
    wanted = [ck.TopicPartition(topic, p, int(float(start) * 1000)) for p in partitions]
    found = consumer.offsets_for_times(wanted, timeout=10)
    return [ck.TopicPartition(topic, tp.partition, tp.offset if tp.offset >= 0 else
                              ends[tp.partition]) for tp in found]


def _record(msg: Any) -> Tailed:
    value = msg.value() or b""
    try:
        doc = json.loads(value)
        envelope = doc if isinstance(doc, dict) and "event_type" in doc else None
    except ValueError:
        envelope = None
    return Tailed(msg.partition(), msg.offset(), msg.timestamp()[1], msg.key(), value,
                  dict(msg.headers() or []), envelope)


TABLE_HEADER = f"{'TIME':<24} {'EVENT TYPE':<24} {'USER':<14} DETAILS"


def table_row(record: Tailed) -> str:
    """One aligned, human-readable line: time, type, user and the event's telling fields."""
    doc = record.envelope
    if doc is None:
        moment = _moment(None, record.timestamp_ms)
        return f"{moment:<24} {'(not an envelope)':<24} {_text(record.key):<14} " \
               f"{plural(len(record.value), 'byte')} at partition {record.partition} offset " \
               f"{record.offset}"
    data = doc["data"] if isinstance(doc.get("data"), dict) else {}
    details = [f"{name}={_short(data[name])}" for name in DETAIL_FIELDS if name in data]
    if record.replayed:
        details.append("(replay)")
    moment = _moment(doc.get("timestamp"), record.timestamp_ms)
    return (f"{moment:<24} {doc.get('event_type')!s:<24} {doc.get('user_id')!s:<14} "
            f"{' '.join(details)}")


def _moment(timestamp: object, fallback_ms: int) -> str:
    """The envelope's time to the millisecond (the record's time if it has none)."""
    try:
        return format_when(parse_timestamp(str(timestamp)).timestamp())
    except ValueError:
        return format_when(fallback_ms / 1000)


def _short(value: object, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _text(raw: bytes | None) -> str:
    return raw.decode(errors="replace") if raw else "-"
