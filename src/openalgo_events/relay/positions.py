"""The positions topic (exactly-once): how far each journal is delivered, kept in Kafka itself.

One compacted topic (``KAFKA_RELAY_POSITIONS_TOPIC``) serves every spool of a cluster: a record
per journal, key ``<spool_id>/<writer>``, value the ledger's entry ``[acked_seq, segment,
offset, rejected, shed]`` as JSON (a tombstone once the journal is retired). The relay writes
these records in the same transaction as the events they account for, so Kafka holds them only
together: a relay that crashed after a commit and before its own ledger write finds here that
its journals are further on, and resends nothing. Read back with ``read_committed``: an aborted
transaction's positions never count.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from ..errors import require
from ..transports.kafka_errors import QuietLibrdkafkaLog

log = logging.getLogger("openalgo_events.relay")

# The topic's settings, whoever creates it (the relay at its first start, or ``topics create``):
# compacted, so one record per journal stays; segments rolled daily and compacted at once, so
# retired journals' records go; two in-sync copies (fewer on a smaller cluster).
TOPIC_CONFIG = {"cleanup.policy": "compact", "segment.ms": str(24 * 3600 * 1000),
                "min.compaction.lag.ms": "0"}
MIN_INSYNC_REPLICAS = 2


class Positions:
    """One spool's records on the positions topic.

    >>> Positions("openalgo_events_positions", "3f2a...").key("1234-5678")  # doctest: +SKIP
    b'3f2a.../1234-5678'
    """

    def __init__(self, topic: str, spool_id: str) -> None:
        self.topic = topic
        self.spool_id = spool_id
        self._prefix = f"{spool_id}/".encode()

    def key(self, writer: str) -> bytes:
        return self._prefix + writer.encode()

    @staticmethod
    def value(position: list[int] | None) -> bytes | None:
        return None if position is None else json.dumps(position).encode()

    def read(self, client_config: Mapping[str, Any], timeout: float = 10.0,
             ) -> dict[str, list[int]] | None:
        """Every journal's committed position for this spool, or None when the topic could not
        be read to its end within ``timeout`` seconds (then nothing may be sent: it could be a
        resend)."""
        ck: Any = require("confluent_kafka", "kafka")
        conf = {k: v for k, v in client_config.items()
                if not k.startswith(("transactional", "enable.idempotence", "acks",
                                     "compression", "batch", "linger", "message.max",
                                     "error_cb"))}
        consumer = ck.Consumer({**conf, "group.id": f"openalgo-events-positions-{uuid.uuid4()}",
                                "enable.auto.commit": False, "enable.partition.eof": True,
                                "isolation.level": "read_committed",
                                "logger": QuietLibrdkafkaLog()})
        found: dict[str, list[int]] = {}
        try:
            metadata = consumer.list_topics(self.topic, timeout=timeout)
            topic = metadata.topics.get(self.topic)
            if topic is None or topic.error is not None:
                return None
            partitions = list(topic.partitions)
            consumer.assign([ck.TopicPartition(self.topic, p, ck.OFFSET_BEGINNING)
                             for p in partitions])
            import time

            deadline = time.monotonic() + timeout
            at_end: set[int] = set()
            while len(at_end) < len(partitions):
                if time.monotonic() > deadline:
                    return None
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error() is not None:
                    if msg.error().code() == ck.KafkaError._PARTITION_EOF:
                        at_end.add(msg.partition())
                    continue
                key = msg.key() or b""
                if not key.startswith(self._prefix):
                    continue
                writer = key[len(self._prefix):].decode(errors="replace")
                if msg.value() is None:
                    found.pop(writer, None)
                    continue
                try:
                    entry = json.loads(msg.value())
                    found[writer] = [int(x) for x in entry[:5]]
                except (ValueError, TypeError, IndexError):
                    log.warning("relay: an unreadable record for %s on %s; ignored", writer,
                                self.topic)
            return found
        except Exception as exc:  # unreachable, forbidden: the caller retries
            log.debug("relay: reading %s failed: %s", self.topic, exc)
            return None
        finally:
            consumer.close()


def ensure_topic(client_config: Mapping[str, Any], topic: str, timeout: float = 10.0,
                 ) -> tuple[bool, str | None]:
    """Create the positions topic if it is missing (``TOPIC_CONFIG``, one partition, replicated
    as the cluster allows). Returns (there now, why it cannot be: a reason to fall back, or
    None when the cluster did not answer: try again)."""
    admin_module: Any = require("confluent_kafka.admin", "kafka")
    conf = {k: v for k, v in client_config.items()
            if not k.startswith(("transactional", "enable.idempotence", "acks", "compression",
                                 "batch", "linger", "message.max", "error_cb"))}
    admin = admin_module.AdminClient({**conf, "logger": QuietLibrdkafkaLog()})
    try:
        metadata = admin.list_topics(topic, timeout=timeout)
        found = metadata.topics.get(topic)
        if found is not None and found.error is None:
            return True, None
        replicas = max(1, min(3, len(metadata.brokers)))
        futures = admin.create_topics([admin_module.NewTopic(
            topic, num_partitions=1, replication_factor=replicas,
            config={**TOPIC_CONFIG,
                    "min.insync.replicas": str(min(MIN_INSYNC_REPLICAS, replicas))})],
            request_timeout=timeout)
        for future in futures.values():
            try:
                future.result(timeout)
            except Exception as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    return False, (f"the positions topic {topic} is missing and cannot be "
                                   f"created ({exc}); run 'openalgo-events topics create' with "
                                   "a principal allowed to create topics")
        return True, None
    except Exception:  # no answer: the caller tries again
        return False, None
