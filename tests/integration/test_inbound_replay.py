"""A replay request re-publishes exactly one user's events of a time window from the trail."""

from __future__ import annotations

import json
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


def _a_moment_between() -> float:
    """A time after everything journaled so far and before everything journaled next (the
    clock is read, then seen to move on)."""
    moment = time.time()
    wait_for(lambda: time.time() > moment + 0.002, 1, step=0.001, message="the clock to move")
    return moment


def test_replay_request_republishes_the_users_window(kafka_bootstrap, topic, tmp_path):
    """Of alice's five events (two before the window, two in it, one after it) and bob's two in
    it, a request for alice's window sends exactly her two events in it again, same ids, with
    the openalgo_replay header."""
    order_topic, esb_topic = topic, f"{topic}-esb"
    create_topic(kafka_bootstrap, order_topic)
    create_topic(kafka_bootstrap, esb_topic)
    spool_path = str(tmp_path / "spool")
    publisher = KafkaEventPublisher(kafka_bootstrap, order_topic,
                                    settings=Settings.from_env({"KAFKA_SPOOL_PATH": spool_path}))

    def alice(i: int) -> str:
        return publisher.publish_order_event("alice", "SBIN-EQ", "BUY", f"A{i}", "live").event_id

    before = [alice(0), alice(1)]
    since = _a_moment_between()
    inside = [alice(2), alice(3)]
    bob = [publisher.publish_order_event("bob", "INFY-EQ", "SELL", f"B{i}", "live").event_id
           for i in range(2)]
    until = _a_moment_between()
    after = [alice(4)]
    assert publisher.flush(20) == 0

    consumer = EsbConsumer(consumer_settings(kafka_bootstrap, esb_topic, tmp_path),
                           publisher=publisher).start()
    try:
        produce(kafka_bootstrap, esb_topic, esb_message(
            "replay_request", "ops", {"user_id": "alice", "since": _rfc3339(since),
                                      "until": _rfc3339(until)}))
        wait_for(lambda: consumer.health()["handled"] == 1, 30, message="the replay request")
        assert publisher.flush(20) == 0
    finally:
        assert consumer.stop()
        publisher.close(10)

    messages = read_topic(kafka_bootstrap, order_topic, 10, timeout=3)  # a 10th must not come
    assert len(messages) == 9
    replayed = [m for m in messages if ("openalgo_replay", b"1") in (m.headers() or [])]
    assert [json.loads(m.value())["event_id"] for m in replayed] == inside
    assert all(m.key() == b"alice" for m in replayed)
    originals = {json.loads(m.value())["event_id"] for m in messages if m not in replayed}
    assert originals == {*before, *inside, *bob, *after}


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
