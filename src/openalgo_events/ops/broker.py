"""Reaching the cluster from the command line: clients that stay quiet and fail in one line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import Settings
from ..errors import ConfigError, OpenAlgoEventsError, require


class BrokerUnreachableError(OpenAlgoEventsError):
    """No broker answered a metadata request in time; the message names the servers and fixes."""


def kafka() -> Any:
    """The confluent_kafka module, or ``MissingDependencyError`` with the install command."""
    return require("confluent_kafka", "kafka")


def kafka_admin() -> Any:
    """The confluent_kafka.admin module (AdminClient, NewTopic, ConfigResource)."""
    return require("confluent_kafka.admin", "kafka")


def client_config(settings: Settings) -> dict[str, Any]:
    """The settings' client properties, with librdkafka's own logging off: a command's errors
    are reported once, as a sentence, not as a stream of reconnect lines."""
    if not settings.bootstrap_servers:
        raise ConfigError(["KAFKA_BOOTSTRAP_SERVERS is not set; set it to your brokers as "
                           "host:port[,host:port] (or run 'openalgo-events dev-broker' for a "
                           "local one)"])
    return {**settings.client_config(), "log_level": 0}


def unreachable(settings: Settings, reason: object, timeout: float) -> BrokerUnreachableError:
    """The one-line error for a cluster that did not answer, with any secret scrubbed."""
    text = str(reason)
    for secret in (settings.sasl_password, *settings.librdkafka.values()):
        if secret and len(secret) > 3:
            text = text.replace(secret, "********")
    return BrokerUnreachableError(
        f"cannot reach Kafka at {settings.bootstrap_servers} within {timeout:g}s ({text}); "
        "check KAFKA_BOOTSTRAP_SERVERS, the network and KAFKA_SECURITY_PROTOCOL/SASL settings, "
        "and that the broker is running (locally: 'openalgo-events dev-broker' or "
        "'docker compose up -d')"
    )


def admin_client(settings: Settings) -> Any:
    return kafka_admin().AdminClient(client_config(settings))


def cluster_metadata(settings: Settings, timeout: float, client: Any = None) -> Any:
    """The cluster's metadata (brokers and every topic), or ``BrokerUnreachableError``.

    It asks for all topics rather than one: asking a broker about a single missing topic may
    auto-create it. ``client`` is any client with ``list_topics`` (admin, producer, consumer).
    """
    client = admin_client(settings) if client is None else client
    try:
        return client.list_topics(timeout=timeout)
    except kafka().KafkaException as exc:
        raise unreachable(settings, _reason(exc), timeout) from exc


def _reason(exc: Exception) -> str:
    error = exc.args[0] if exc.args else exc
    return str(error.str()) if hasattr(error, "str") else str(error)


@dataclass(frozen=True)
class Probe:
    """What one metadata request said: brokers, cluster id and the partitions of some topics."""

    brokers: list[str]
    cluster_id: str | None
    partitions: dict[str, int | None]  # topic -> partition count, None when it does not exist


def probe(settings: Settings, topics: list[str], timeout: float) -> Probe:
    """Ask the cluster for its metadata once (``BrokerUnreachableError`` if nobody answers)."""
    metadata = cluster_metadata(settings, timeout)
    brokers = sorted(str(b) for b in metadata.brokers.values())
    partitions: dict[str, int | None] = {}
    for name in topics:
        topic = metadata.topics.get(name)
        partitions[name] = len(topic.partitions) if topic is not None and not topic.error else None
    return Probe(brokers, metadata.cluster_id, partitions)


def guarantee_in_force(settings: Settings, timeout: float) -> str:
    """What the relay will deliver with these settings on this cluster, in one sentence:
    exactly-once needs transactions, which this asks the cluster for (a throwaway
    transactional id: nothing is produced); a refusal means the relay falls back."""
    if settings.delivery_guarantee != "exactly_once":
        return "at-least-once (KAFKA_DELIVERY_GUARANTEE=at_least_once)"
    import uuid

    from ..relay.producer import NO_TRANSACTIONS, error_name

    ck = kafka()
    producer = ck.Producer({**settings.producer_config(), **client_config(settings),
                            "transactional.id": f"openalgo-events-check-{uuid.uuid4()}"})
    try:
        producer.init_transactions(timeout)
    except ck.KafkaException as exc:
        err = exc.args[0] if exc.args else exc
        if error_name(err) in NO_TRANSACTIONS:
            return (f"at-least-once: the cluster refuses transactions to this producer ({err}); "
                    "the relay falls back to it (grant the principal Write on the "
                    "transactional id openalgo-events-* for exactly-once)")
        return f"exactly-once requested; transactions could not be checked ({err})"
    return "exactly-once (transactions available; consumers read with read_committed)"
