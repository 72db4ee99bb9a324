"""Poison, stale and failing messages go to the dead-letter topic and the consumer moves on."""

from __future__ import annotations

import json

import pytest

from openalgo_events.inbound import EsbConsumer
from tests.integration.inbound_support import consumer_settings, esb_message, produce
from tests.support import create_topic, read_topic, wait_for

pytestmark = pytest.mark.broker


def test_poison_messages_are_dead_lettered_and_the_next_is_handled(kafka_bootstrap, topic,
                                                                   tmp_path):
    """Each kind of bad message lands in <topic>.dlq with its reason, attempts and origin, its
    key, value and headers intact, and the good message after them is still handled."""
    create_topic(kafka_bootstrap, topic)
    settings = consumer_settings(kafka_bootstrap, topic, tmp_path,
                                 ORDER_EVENT_MAX_MESSAGE_BYTES="2000",
                                 KAFKA_CONSUMER_MAX_AGE_SECONDS="60")
    handled: list[str] = []

    def always_fails(envelope, context):
        raise RuntimeError(f"downstream down (attempt {context.attempt})")

    consumer = EsbConsumer(settings, handlers={
        "always_fails": always_fails,
        "good": lambda envelope, context: handled.append(envelope.data["n"]),
    })
    poison = [
        (b"this is not json", "malformed"),
        (json.dumps({"event_type": "good", "user_id": "alice", "data": {}}).encode(),
         "malformed"),
        (esb_message("no_such_type", "alice", {}), "unknown_event_type"),
        (esb_message("good", "alice", {"n": "x" * 3000}), "oversized"),
        (esb_message("good", "alice", {"n": "old"}, age_seconds=600), "stale"),
        (esb_message("good", "alice", {"n": "late", "expires_at": "2020-01-01T00:00:00Z"}),
         "expired"),
        (esb_message("order_acknowledgment", "alice", {"status": "acknowledged"}),
         "invalid_data"),
        (esb_message("always_fails", "alice", {}), "handler_failed"),
    ]
    produce(kafka_bootstrap, topic, *(value for value, _ in poison),
            esb_message("good", "alice", {"n": "after"}))
    consumer.start()
    try:
        wait_for(lambda: handled, 30, message="the good message")
    finally:
        assert consumer.stop()
    assert handled == ["after"]
    health = consumer.health()
    assert (health["handled"], health["dead_lettered"]) == (1, len(poison))

    dead = sorted(read_topic(kafka_bootstrap, settings.dlq_topic, len(poison)),
                  key=lambda m: int(dict(m.headers())["dlq_original_offset"]))
    assert [dict(m.headers())["dlq_reason"].decode() for m in dead] == [r for _, r in poison]
    for offset, (msg, (sent, _)) in enumerate(zip(dead, poison, strict=True)):
        headers = dict(msg.headers())
        assert headers["dlq_original_topic"] == topic.encode()
        assert headers["dlq_original_partition"] == b"0"
        assert headers["dlq_original_offset"] == str(offset).encode()
        assert headers["dlq_error"]
        assert msg.value() == (sent if isinstance(sent, bytes) else json.dumps(sent).encode())
    failed = dict(dead[-1].headers())
    assert failed["dlq_attempts"] == b"3"
    assert b"downstream down (attempt 3)" in failed["dlq_error"]
    assert dead[-1].key() == b"alice"


def test_a_handler_that_recovers_is_retried_not_dead_lettered(kafka_bootstrap, topic, tmp_path):
    """A handler that fails twice and then succeeds handles the message once, on attempt 3."""
    create_topic(kafka_bootstrap, topic)
    attempts: list[int] = []

    def flaky(envelope, context):
        attempts.append(context.attempt)
        if context.attempt < 3:
            raise ConnectionError("try again")

    consumer = EsbConsumer(consumer_settings(kafka_bootstrap, topic, tmp_path),
                           handlers={"flaky": flaky})
    produce(kafka_bootstrap, topic, esb_message("flaky", "alice", {}))
    consumer.start()
    try:
        wait_for(lambda: consumer.health()["handled"] == 1, 30, message="the retried message")
    finally:
        assert consumer.stop()
    assert attempts == [1, 2, 3]
    health = consumer.health()
    assert health["dead_lettered"] == 0 and health["consecutive_errors"] == 0
