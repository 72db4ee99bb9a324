"""Two consumers in one group share the partitions; one stopping hands them over, nothing lost."""

from __future__ import annotations

import dataclasses

import pytest

from openalgo_events.inbound import EsbConsumer
from tests.integration.inbound_support import consumer_settings, esb_message, produce
from tests.support import create_topic, wait_for

pytestmark = pytest.mark.broker


def test_two_consumers_split_partitions_and_hand_over(kafka_bootstrap, topic, tmp_path):
    """With 4 partitions, two group members each get some and both handle messages; after one
    stops, the other takes all 4 and every message is handled at least once."""
    create_topic(kafka_bootstrap, topic, partitions=4)
    settings = consumer_settings(kafka_bootstrap, topic, tmp_path)
    handled: dict[str, list[str]] = {"a": [], "b": []}

    def recorder(name: str):
        return {"note": lambda envelope, context: handled[name].append(envelope.event_id)}

    a = EsbConsumer(settings, handlers=recorder("a")).start()
    b = EsbConsumer(dataclasses.replace(settings, consumer_state_path=str(tmp_path / "b.db")),
                    handlers=recorder("b")).start()
    try:
        wait_for(lambda: a.health()["partitions"] and b.health()["partitions"]
                 and len(a.health()["partitions"] + b.health()["partitions"]) == 4,
                 40, message="both members assigned")
        assert set(a.health()["partitions"]).isdisjoint(b.health()["partitions"])
        sent = [esb_message("note", f"user{i % 16}", {"n": i}) for i in range(80)]
        produce(kafka_bootstrap, topic, *sent)
        wait_for(lambda: len(handled["a"]) + len(handled["b"]) >= 80, 30,
                 message="the first 80 handled")
        assert handled["a"] and handled["b"]

        assert a.stop()
        wait_for(lambda: len(b.health()["partitions"]) == 4, 40, message="b takes over")
        more = [esb_message("note", f"user{i % 16}", {"n": i}) for i in range(80, 160)]
        produce(kafka_bootstrap, topic, *more)
        want = {m["event_id"] for m in sent + more}
        wait_for(lambda: want <= set(handled["a"]) | set(handled["b"]), 30,
                 message="all 160 handled")
    finally:
        a.stop()
        b.stop()
