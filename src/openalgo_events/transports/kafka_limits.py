"""One size limit end to end: the topic must take every record ``publish`` accepts.

``publish`` refuses a record (value, key, headers and framing) larger than
``ORDER_EVENT_MAX_MESSAGE_BYTES``, and the producer's ``message.max.bytes`` is set to the same
number; a topic whose ``max.message.bytes`` is smaller would refuse the records in between,
which the relay then sets aside as rejected. ``openalgo-events check`` and the relay's start-up
look this up once and say so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import require


def topic_config(client_config: Mapping[str, Any], topic: str, name: str,
                 timeout: float = 5.0) -> int | None:
    """One numeric topic config of ``topic`` (DescribeConfigs: ``max.message.bytes``,
    ``min.insync.replicas``), or None when it cannot be read (no topic, no permission, no
    broker). Blocks up to ``timeout`` seconds."""
    admin_module: Any = require("confluent_kafka.admin", "kafka")
    try:
        admin = admin_module.AdminClient(dict(client_config))
        futures = admin.describe_configs([admin_module.ConfigResource("topic", topic)],
                                         request_timeout=timeout)
        for future in futures.values():
            entry = future.result(timeout).get(name)
            return int(entry.value) if entry is not None and entry.value is not None else None
    except Exception:  # absent, forbidden or unreachable: the other checks say which
        return None
    return None


def topic_max_message_bytes(client_config: Mapping[str, Any], topic: str,
                            timeout: float = 5.0) -> int | None:
    """The topic's ``max.message.bytes``, or None when it cannot be read (``topic_config``)."""
    return topic_config(client_config, topic, "max.message.bytes", timeout)


def topic_limit_problem(client_config: Mapping[str, Any], topic: str,
                        accepted: int) -> str | None:
    """A warning when topic ``topic`` takes smaller records than ``accepted`` bytes (what
    ``publish`` accepts), else None (also when the topic's setting cannot be read)."""
    limit = topic_max_message_bytes(client_config, topic)
    if limit is None or limit >= accepted:
        return None
    return (f"topic {topic} takes records of at most {limit} bytes (its max.message.bytes), but "
            f"publish accepts up to {accepted} (ORDER_EVENT_MAX_MESSAGE_BYTES): larger events "
            f"would be refused by the broker and set aside as rejected. Raise the topic's "
            f"max.message.bytes to {accepted} (kafka-configs --alter --entity-type topics "
            f"--entity-name {topic} --add-config max.message.bytes={accepted}) or set "
            f"ORDER_EVENT_MAX_MESSAGE_BYTES={limit}")
