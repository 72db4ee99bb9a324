"""A replay request re-publishes exactly one user's events of a time window from the trail."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, datetime

import pytest

from openalgo_events import KafkaEventPublisher, Settings
from openalgo_events.envelope import utc_timestamp
from openalgo_events.inbound import EsbConsumer
from tests.integration.inbound_support import consumer_settings, esb_message, produce
from tests.support import create_topic, read_topic, wait_for

pytestmark = pytest.mark.broker


def _rfc3339(unix: float) -> str:
    return utc_timestamp(datetime.fromtimestamp(unix, UTC))


def _place(spool_path: str, event_ids: list[str], created: float) -> None:
    """Move events in time, as if they had been published at ``created``."""
    with sqlite3.connect(spool_path) as db:
        db.executemany("UPDATE events SET created = ? WHERE event_id = ?",
                       [(created, event_id) for event_id in event_ids])


def test_replay_request_republishes_the_users_window(kafka_bootstrap, topic, tmp_path):
    """Of alice's four events (two an hour old, two ten minutes old) and bob's two, a request
    for alice's last twenty minutes sends exactly her two recent events again, same ids, with
    the openalgo_replay header."""
    order_topic, esb_topic = topic, f"{topic}-esb"
    create_topic(kafka_bootstrap, order_topic)
    create_topic(kafka_bootstrap, esb_topic)
    spool_path = str(tmp_path / "spool.db")
    publisher = KafkaEventPublisher(kafka_bootstrap, order_topic,
                                    settings=Settings.from_env({"KAFKA_SPOOL_PATH": spool_path}))
    alice = [publisher.publish_order_event("alice", "SBIN-EQ", "BUY", f"A{i}", "live").event_id
             for i in range(4)]
    bob = [publisher.publish_order_event("bob", "INFY-EQ", "SELL", f"B{i}", "live").event_id
           for i in range(2)]
    assert publisher.flush(20) == 0
    now = time.time()
    _place(spool_path, alice[:2], now - 3600)
    _place(spool_path, alice[2:] + bob, now - 600)

    consumer = EsbConsumer(consumer_settings(kafka_bootstrap, esb_topic, tmp_path),
                           publisher=publisher).start()
    try:
        produce(kafka_bootstrap, esb_topic, esb_message(
            "replay_request", "ops", {"user_id": "alice", "since": _rfc3339(now - 1200),
                                      "until": _rfc3339(now - 60)}))
        wait_for(lambda: consumer.health()["handled"] == 1, 30, message="the replay request")
        assert publisher.flush(20) == 0
    finally:
        assert consumer.stop()
        publisher.close(10)

    messages = read_topic(kafka_bootstrap, order_topic, 9, timeout=3)  # a 9th must not come
    assert len(messages) == 8
    replayed = [m for m in messages if ("openalgo_replay", b"1") in (m.headers() or [])]
    assert [json.loads(m.value())["event_id"] for m in replayed] == alice[2:]
    assert all(m.key() == b"alice" for m in replayed)



def test_replay_without_a_trail_is_dead_lettered(kafka_bootstrap, topic, tmp_path):
    """A consumer with no Kafka publisher dead-letters a replay request with reason no_trail."""
    create_topic(kafka_bootstrap, topic)
    settings = consumer_settings(kafka_bootstrap, topic, tmp_path)
    consumer = EsbConsumer(settings).start()
    try:
        produce(kafka_bootstrap, topic, esb_message("replay_request", "alice",
                                                    {"since": "2026-01-29T10:00:00Z"}))
        wait_for(lambda: consumer.health()["dead_lettered"] == 1, 30, message="dead letter")
    finally:
        assert consumer.stop()
    [dead] = read_topic(kafka_bootstrap, settings.dlq_topic, 1)
    assert dict(dead.headers())["dlq_reason"] == b"no_trail"
