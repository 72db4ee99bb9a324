"""Paths only a real Kafka cluster takes: a missing topic with auto-creation off, SASL/SCRAM
authentication, the idempotent producer's lost state, and the topic layout `topics create`
makes on a 3-broker cluster."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from click.testing import CliRunner

from openalgo_events import KafkaEventPublisher, Settings
from openalgo_events.cli import main
from openalgo_events.ops.topics import describe_topics
from openalgo_events.spool import Spool
from tests.integration.relay_support import relay_errors, relay_log, stop_relays
from tests.kafka_cluster import SCRAM_PASSWORD, SCRAM_USER, KafkaCluster
from tests.support import TopicCollector, create_topic, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def settings(tmp_path: Any, **env: str) -> Settings:
    return Settings.from_env({"KAFKA_SPOOL_PATH": str(tmp_path / "spool"),
                              "KAFKA_STALL_TIMEOUT_SECONDS": "5", **env})


def errors_mentioning(tmp_path: Any, *words: str) -> list[str]:
    """The ERROR lines with every one of ``words`` that the relay process (which runs the
    producer) wrote to its log, ``<spool>/relay.log``."""
    return relay_errors(str(tmp_path / "spool"), *words)


def missing_topic_named(health: dict[str, Any], topic: str) -> bool:
    """Whether the host's health names the missing topic as the global condition it is, with
    the command that fixes it."""
    return (not health["healthy"] and health["condition"] == "topic missing"
            and topic in str(health["condition_detail"])
            and "openalgo-events topics create" in str(health["condition_detail"]))


def test_topics_create_makes_the_documented_layout_on_three_brokers(kafka_cluster, cli_env,
                                                                   topic):
    """`openalgo-events topics create` on the 3-broker cluster: 5 partitions, every partition
    on 3 replicas all in sync, min.insync.replicas=2, the documented retention, snappy."""
    esb = f"{topic}-esb"
    cli_env(KAFKA_BOOTSTRAP_SERVERS=kafka_cluster.bootstrap_servers,
            KAFKA_ORDER_EVENTS_TOPIC=topic, KAFKA_ESB_EVENTS_TOPIC=esb)
    result = CliRunner().invoke(main, ["topics", "create"])
    assert result.exit_code == 0, result.output
    assert "capped" not in result.output
    infos = describe_topics(Settings.from_env({
        "KAFKA_BOOTSTRAP_SERVERS": kafka_cluster.bootstrap_servers}), [topic, esb, f"{esb}.dlq"])
    retention = {topic: "604800000", esb: "86400000", f"{esb}.dlq": "604800000"}
    for info in infos:
        assert info.exists, info.name
        assert [p.id for p in info.partitions] == [0, 1, 2, 3, 4]
        for partition in info.partitions:
            assert sorted(partition.replicas) == [1, 2, 3]
        configs = {key: value for key, (value, _default) in info.configs.items()}
        assert configs["min.insync.replicas"] == "2"
        assert configs["retention.ms"] == retention[info.name]
        assert configs["compression.type"] == "snappy"
        assert configs["max.message.bytes"] == "1048576"
        assert configs["cleanup.policy"] == "delete"
    kafka_cluster.wait_in_sync(topic, 30)


def test_missing_topic_keeps_events_says_so_once_and_delivers_once_created(kafka_bootstrap,
                                                                          tmp_path, topic):
    """With auto-creation off, events for a topic that does not exist stay in the spool; ERROR
    names the topic and `openalgo-events topics create` once; health names the topic; all are
    delivered once the topic exists."""
    # librdkafka fails a message for an unknown topic after topic.metadata.propagation.max.ms
    # (30 s by default): shortened here to keep the test short.
    publisher = KafkaEventPublisher(kafka_bootstrap, topic, settings=settings(
        tmp_path, KAFKA_LIBRDKAFKA_TOPIC_METADATA_PROPAGATION_MAX_MS="3000"))
    collector = None
    try:
        ids = {publisher.publish_order_event("alice", "SBIN", "BUY", str(i), "live").event_id
               for i in range(20)}
        wait_for(lambda: errors_mentioning(tmp_path, topic, "topics create"), 60,
                 message="an ERROR naming the topic and the command")
        health = wait_for(lambda: (h := publisher.health()) and missing_topic_named(h, topic)
                          and h, 30, message="health naming the missing topic")
        assert health["spool_depth"] == 20
        publisher.publish_order_event("alice", "SBIN", "BUY", "late", "live")
        assert len(errors_mentioning(tmp_path, topic, "topics create")) == 1
        create_topic(kafka_bootstrap, topic, partitions=5)
        collector = TopicCollector(kafka_bootstrap, topic)
        wait_for(lambda: ids <= set(collector.event_ids()), 90,
                 message="every event once the topic exists")
        wait_for(lambda: publisher.health()["healthy"], 30, message="healthy again")
        assert len(errors_mentioning(tmp_path, topic, "topics create")) == 1
        assert publisher.health()["condition"] is None
    finally:
        if collector:
            collector.stop()
        publisher.close(5)


def scram_publisher(cluster: KafkaCluster, topic: str, tmp_path: Any,
                    password: str) -> KafkaEventPublisher:
    """A publisher on the cluster's SASL/SCRAM-SHA-512 listener, as the suite's user."""
    return KafkaEventPublisher(cluster.sasl_bootstrap_servers, topic, settings=settings(
        tmp_path, KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        KAFKA_SASL_USERNAME=SCRAM_USER, KAFKA_SASL_PASSWORD=password))


def test_sasl_scram_wrong_password_is_an_authentication_error_once(kafka_cluster: KafkaCluster,
                                                                  tmp_path, topic, caplog,
                                                                  capsys):
    """A wrong SCRAM-SHA-512 password: one ERROR naming an authentication failure (not one per
    retry), health says so, events stay spooled, and the password is in no output."""
    caplog.set_level(logging.DEBUG)
    create_topic(kafka_cluster.bootstrap_servers, topic)
    wrong = "wrong-" + "pass-" + "91c2e"
    publisher = scram_publisher(kafka_cluster, topic, tmp_path, wrong)
    try:
        publisher.publish_order_event("alice", "SBIN", "BUY", "1", "live")
        wait_for(lambda: errors_mentioning(tmp_path, "authentication"), 30,
                 message="an ERROR naming the authentication failure")
        health = wait_for(lambda: (h := publisher.health()) and not h["healthy"]
                          and h["condition"] == "authentication failed" and h, 30,
                          message="health to report the failure")
        assert "KAFKA_SASL_PASSWORD" in str(health["condition_detail"])
        assert health["spool_depth"] == 1
        # librdkafka retries each broker about every second: let the relay run on for three
        # more status files (one a second at least); retries in the same state must not add
        # ERROR lines.
        spool = str(tmp_path / "spool")

        def updated() -> float:
            with Spool(spool) as opened:
                return float(opened.status().get("updated") or 0)

        since = updated()
        wait_for(lambda: updated() >= since + 3, 30, message="the relay running on")
        assert len(errors_mentioning(tmp_path, "authentication")) == 1
        assert not errors_mentioning(tmp_path, "unreachable")
    finally:
        publisher.close(1)
        stop_relays(str(tmp_path / "spool"))  # it would wait for a publisher for a minute
    out, err = capsys.readouterr()
    # every file of the spool: relay.log, status, ledger, identity, journals, rejected.db
    files = b"".join(path.read_bytes() for path in (tmp_path / "spool").rglob("*")
                     if path.is_file() and not path.is_socket())
    assert wrong.encode() not in files
    everything = (out + err + "\n".join(r.getMessage() for r in caplog.records) + str(health)
                  + "\n".join(text for _, text in relay_log(str(tmp_path / "spool"))))
    assert wrong not in everything


def test_sasl_scram_right_password_delivers(kafka_cluster: KafkaCluster, tmp_path, topic):
    """The right SCRAM-SHA-512 password on the SASL listener delivers, and health is healthy."""
    create_topic(kafka_cluster.bootstrap_servers, topic)
    publisher = scram_publisher(kafka_cluster, topic, tmp_path, SCRAM_PASSWORD)
    collector = TopicCollector(kafka_cluster.bootstrap_servers, topic)
    try:
        ids = {publisher.publish_order_event("alice", "SBIN", "BUY", str(i), "live").event_id
               for i in range(10)}
        assert publisher.flush(30) == 0
        wait_for(lambda: ids <= set(collector.event_ids()), 30, message="the events")
        assert publisher.health()["healthy"]
    finally:
        collector.stop()
        publisher.close(5)


def set_broker_config(cluster: KafkaCluster, name: str, value: str | None) -> None:
    """Set (or with None, remove) a dynamic config on every broker, one broker per call (the
    client allows one BROKER resource per request)."""
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

    admin = AdminClient({"bootstrap.servers": cluster.bootstrap_servers})
    op = AlterConfigOpType.SET if value is not None else AlterConfigOpType.DELETE
    for node in cluster.broker_nodes:
        resource = ConfigResource(ConfigResource.Type.BROKER, str(node.node_id),
                                  incremental_configs=[ConfigEntry(name, value or "",
                                                                   incremental_operation=op)])
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(10)


def test_expired_producer_state_loses_and_reorders_nothing(cluster, tmp_path, topic):
    """The brokers forget the idempotent producer's id while it is idle
    (producer.id.expiration.ms=1000, checked every second); its next events, with sequence
    numbers the brokers no longer know, all arrive once and in order (Kafka 4.4 accepts them,
    or librdkafka's fatal error makes the publisher rebuild its producer: either way, no loss)."""
    create_topic(cluster.bootstrap_servers, topic, partitions=1)
    publisher = KafkaEventPublisher(cluster.bootstrap_servers, topic, settings=settings(tmp_path))
    collector = TopicCollector(cluster.bootstrap_servers, topic)
    try:
        ids = [publisher.publish_order_event("alice", "SBIN", "BUY", str(i), "live").event_id
               for i in range(50)]
        assert publisher.flush(30) == 0
        set_broker_config(cluster, "producer.id.expiration.ms", "1000")
        try:
            # The scenario: the producer idles past the expiry and the brokers' 1 s check.
            time.sleep(3.5)
            ids += [publisher.publish_order_event("alice", "SBIN", "BUY", str(i), "live").event_id
                    for i in range(50, 100)]
            assert publisher.flush(60) == 0
        finally:
            set_broker_config(cluster, "producer.id.expiration.ms", None)
        wait_for(lambda: len(collector.event_ids()) >= 100, 30, message="all 100 events")
        received = collector.event_ids()
        assert received == ids  # once each, in publish order
        print(f"\nexpired producer state: 100 delivered, 0 duplicates, "
              f"{publisher.health()['producer_rebuilds']} producer rebuilds")
    finally:
        collector.stop()
        publisher.close(5)


def test_topic_deleted_under_a_running_publisher_is_named_once_and_recovered(
        kafka_cluster: KafkaCluster, tmp_path, topic):
    """The topic deleted while the publisher runs: failed deliveries are recognised as the
    topic missing (ERROR once, naming the topic and `topics create`; health names it), the
    events stay spooled, and everything arrives once the topic is created again."""
    from confluent_kafka.admin import AdminClient

    create_topic(kafka_cluster.bootstrap_servers, topic, partitions=5)
    publisher = KafkaEventPublisher(kafka_cluster.bootstrap_servers, topic, settings=settings(
        tmp_path, KAFKA_LIBRDKAFKA_TOPIC_METADATA_PROPAGATION_MAX_MS="3000",
        KAFKA_LIBRDKAFKA_TOPIC_METADATA_REFRESH_INTERVAL_MS="1000"))
    collector = None
    try:
        first = publisher.publish_order_event("alice", "SBIN", "BUY", "0", "live").event_id
        assert publisher.flush(30) == 0
        admin = AdminClient({"bootstrap.servers": kafka_cluster.bootstrap_servers})
        for future in admin.delete_topics([topic]).values():
            future.result(30)
        wait_for(lambda: topic not in admin.list_topics(timeout=5).topics, 30,
                 message="the topic gone")
        ids = {publisher.publish_order_event("alice", "SBIN", "BUY", str(i), "live").event_id
               for i in range(1, 21)}
        wait_for(lambda: errors_mentioning(tmp_path, topic, "topics create"), 90,
                 message="an ERROR naming the topic and the command")
        health = wait_for(lambda: (h := publisher.health()) and missing_topic_named(h, topic)
                          and h, 30, message="health naming the missing topic")
        assert health["spool_depth"] >= 1
        create_topic(kafka_cluster.bootstrap_servers, topic, partitions=5)
        collector = TopicCollector(kafka_cluster.bootstrap_servers, topic)
        wait_for(lambda: ids <= set(collector.event_ids()), 120,
                 message="every event once the topic exists again")
        wait_for(lambda: publisher.health()["healthy"], 30, message="healthy again")
        assert first not in collector.event_ids()  # it went down with the deleted topic
        assert len(errors_mentioning(tmp_path, topic, "topics create")) == 1
    finally:
        if collector:
            collector.stop()
        publisher.close(5)
