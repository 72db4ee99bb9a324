"""The consumer's health: polling, lag per partition, and unhealthy after N consecutive errors."""

from __future__ import annotations

import pytest

from openalgo_events.inbound import EsbConsumer
from tests.integration.inbound_support import consumer_settings, esb_message, produce
from tests.support import create_topic, wait_for

pytestmark = pytest.mark.broker


def test_unhealthy_after_consecutive_errors_and_healthy_again(kafka_bootstrap, topic, tmp_path):
    """Two handler failures in a row (KAFKA_CONSUMER_UNHEALTHY_AFTER=2) make it unhealthy; the
    next handled message makes it healthy; lag is reported for each assigned partition."""
    create_topic(kafka_bootstrap, topic, partitions=2)
    settings = consumer_settings(kafka_bootstrap, topic, tmp_path,
                                 KAFKA_CONSUMER_UNHEALTHY_AFTER="2",
                                 KAFKA_CONSUMER_MAX_ATTEMPTS="1")
    broken = {"on": True}

    def downstream(envelope, context):
        if broken["on"]:
            raise ConnectionError("downstream unavailable")

    consumer = EsbConsumer(settings, handlers={"work": downstream}).start()
    try:
        wait_for(lambda: len(consumer.health()["lag"]) == 2, 30, message="lag of 2 partitions")
        health = consumer.health()
        assert health["healthy"] and health["last_poll_age_seconds"] < 5
        produce(kafka_bootstrap, topic, *(esb_message("work", "alice", {}) for _ in range(2)))
        wait_for(lambda: consumer.health()["dead_lettered"] == 2, 30, message="two failures")
        health = consumer.health()
        assert not health["healthy"] and health["consecutive_errors"] == 2
        assert "downstream unavailable" in health["last_error"]

        broken["on"] = False
        produce(kafka_bootstrap, topic, esb_message("work", "alice", {}))
        wait_for(lambda: consumer.health()["healthy"], 30, message="healthy again")
        assert consumer.health()["handled"] == 1
    finally:
        assert consumer.stop()
    assert not consumer.health()["healthy"] and not consumer.health()["running"]
