"""The Kafka path against a real broker: key, headers and value, field by field."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from openalgo_events import KafkaEventPublisher, Settings
from tests.support import create_topic, read_topic

pytestmark = pytest.mark.broker


def _publisher(bootstrap: str, topic: str, tmp_path, **env: str) -> KafkaEventPublisher:
    settings = Settings.from_env({"KAFKA_SPOOL_PATH": str(tmp_path / "spool"), **env})
    return KafkaEventPublisher(bootstrap, topic, settings=settings)


def test_each_catalog_event_round_trips(kafka_bootstrap, topic, tmp_path):
    """Each of the design's five events arrives with the user key, CloudEvents headers and
    the documented JSON envelope."""
    create_topic(kafka_bootstrap, topic)
    publisher = _publisher(kafka_bootstrap, topic, tmp_path)
    sent = [
        publisher.publish_order_event("alice", "SBIN-EQ", "BUY", "ORD1", "live",
                                      broker="angel", quantity="1", price="850.50"),
        publisher.publish_analyzer_update("alice", {"symbol": "RELIANCE-EQ"},
                                          {"status": "success", "mode": "analyze"}),
        publisher.publish_order_notification("bob", "INFY-EQ", "info",
                                             "Positions Already Matched. No Action needed.",
                                             notification_type="position_match"),
        publisher.publish_master_contract_download("angel", "success", "done",
                                                   symbols_count=5000,
                                                   download_time_seconds=45.2),
        publisher.publish_password_change("bob", "success", "Password changed successfully",
                                          ip_address="192.168.1.100", user_agent="Mozilla/5.0"),
    ]
    assert publisher.flush(10) == 0  # close() never waits: the relay delivers
    publisher.close()
    received = {json.loads(m.value())["event_id"]: m for m in read_topic(kafka_bootstrap, topic, 5)}
    assert len(received) == 5
    for envelope in sent:
        msg = received[envelope.event_id]
        assert msg.key() == envelope.user_id.encode()
        value = json.loads(msg.value())
        assert value == envelope.to_dict()
        assert set(value) >= {"event_type", "timestamp", "user_id", "source", "data", "event_id"}
        headers = dict(msg.headers())
        assert headers["ce_id"] == envelope.event_id.encode()
        assert headers["ce_type"] == envelope.event_type.encode()
        assert headers["ce_source"] == b"openalgo"
        assert headers["ce_time"] == envelope.timestamp.encode()
        assert headers["ce_specversion"] == b"1.0"
        assert headers["content-type"] == b"application/json"
    master = json.loads(received[sent[3].event_id].value())
    assert master["user_id"] == "admin"
    assert master["data"] == {"broker": "angel", "status": "success", "message": "done",
                              "symbols_count": 5000, "download_time_seconds": 45.2}


def test_per_user_order_across_partitions(kafka_bootstrap, topic, tmp_path):
    """1,000 events of 10 users over 5 partitions: each user's events stay in one partition,
    in publish order."""
    create_topic(kafka_bootstrap, topic, partitions=5)
    publisher = _publisher(kafka_bootstrap, topic, tmp_path)
    expected = defaultdict(list)
    for i in range(1000):
        user = f"user{i % 10}"
        expected[user].append(publisher.publish_order_event(user, "SBIN", "BUY", str(i),
                                                            "live").event_id)
    assert publisher.flush(20) == 0  # close() never waits: the relay delivers
    publisher.close()
    messages = read_topic(kafka_bootstrap, topic, 1000)
    assert len(messages) == 1000
    seen, partitions = defaultdict(list), defaultdict(set)
    for msg in sorted(messages, key=lambda m: (m.partition(), m.offset())):
        user = msg.key().decode()
        seen[user].append(json.loads(msg.value())["event_id"])
        partitions[user].add(msg.partition())
    assert seen == expected
    assert all(len(p) == 1 for p in partitions.values())
    assert len(set().union(*partitions.values())) > 1


def test_concurrent_callers_keep_each_users_order(kafka_bootstrap, topic, tmp_path):
    """Eight threads publishing at once (one user each, as request threads do): every event
    arrives once, and each user's events in the order that user's thread published them."""
    import threading

    create_topic(kafka_bootstrap, topic, partitions=3)
    publisher = _publisher(kafka_bootstrap, topic, tmp_path)
    published: dict[str, list[str]] = {}

    def caller(user: str) -> None:
        published[user] = [publisher.publish_order_event(user, "SBIN", "BUY", str(i),
                                                         "live").event_id for i in range(500)]

    threads = [threading.Thread(target=caller, args=(f"user{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert publisher.flush(20) == 0  # close() never waits: the relay delivers
    publisher.close()
    seen = defaultdict(list)
    for msg in sorted(read_topic(kafka_bootstrap, topic, 4000),
                      key=lambda m: (m.partition(), m.offset())):
        seen[msg.key().decode()].append(json.loads(msg.value())["event_id"])
    assert seen == published
