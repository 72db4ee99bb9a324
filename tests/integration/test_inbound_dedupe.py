"""An event delivered more than once is handled once, also after the consumer restarts."""

from __future__ import annotations

import pytest

from openalgo_events.inbound import EsbConsumer
from tests.integration.inbound_support import consumer_settings, esb_message, produce
from tests.support import create_topic, wait_for

pytestmark = pytest.mark.broker


def test_same_event_twice_is_handled_once_across_a_restart(kafka_bootstrap, topic, tmp_path):
    """The same event id sent twice is handled once; sent again after a restart (new process
    state, same group and state file) it is skipped, while a new event is handled."""
    create_topic(kafka_bootstrap, topic)
    settings = consumer_settings(kafka_bootstrap, topic, tmp_path)
    handled: list[str] = []
    handlers = {"note": lambda envelope, context: handled.append(envelope.event_id)}
    first = esb_message("note", "alice", {"text": "hello"})
    produce(kafka_bootstrap, topic, first, first)
    consumer = EsbConsumer(settings, handlers=handlers).start()
    try:
        wait_for(lambda: consumer.health()["duplicates_skipped"] == 1, 30,
                 message="the duplicate skipped")
    finally:
        assert consumer.stop()
    assert handled == [first["event_id"]]

    second = esb_message("note", "alice", {"text": "again"})
    produce(kafka_bootstrap, topic, first, second)
    restarted = EsbConsumer(settings, handlers=handlers).start()
    try:
        wait_for(lambda: restarted.health()["handled"] == 1, 30, message="the new event")
    finally:
        assert restarted.stop()
    assert handled == [first["event_id"], second["event_id"]]
    assert restarted.health()["duplicates_skipped"] == 1
