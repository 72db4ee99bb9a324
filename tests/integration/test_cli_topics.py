"""`openalgo-events topics create` prints what the cluster has, read back after creating:
the partitions, replication and configs of each topic it made or found, not what it asked."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from openalgo_events.cli import main
from openalgo_events.devbroker import DevBroker
from tests.support import create_topic

pytestmark = pytest.mark.broker


def line_of(output: str, name: str) -> str:
    [line] = [x for x in output.splitlines() if x.startswith(f"{name}: ")]
    return line


def test_an_existing_topic_is_reported_as_it_is(kafka_bootstrap, cli_env, topic):
    """With the order topic already there with 5 partitions and the cluster's defaults,
    `topics create --partitions 12` says it exists with its 5 partitions, replication 3 and
    its real configs (compression.type=producer), warns that it was left as it is, and makes
    the other two with 12 partitions and the package's configs."""
    create_topic(kafka_bootstrap, topic, partitions=5)
    esb = f"{topic}-esb"
    cli_env(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, KAFKA_ORDER_EVENTS_TOPIC=topic,
            KAFKA_ESB_EVENTS_TOPIC=esb)
    result = CliRunner().invoke(main, ["topics", "create", "--partitions", "12"])
    assert result.exit_code == 0, result.output
    assert line_of(result.stdout, topic) == (
        f"{topic}: already exists (5 partitions, replication factor 3, "
        "retention.ms=604800000, compression.type=producer, max.message.bytes=1048588, "
        "min.insync.replicas=2)")
    assert (f"warning: {topic} already exists with 5 partitions, not 12, and "
            "compression.type=producer, not snappy, and max.message.bytes=1048588, not "
            "1048576; 'topics create' leaves an existing topic as it is") in result.stderr
    for name, retention in ((esb, "86400000"), (f"{esb}.dlq", "604800000")):
        assert line_of(result.stdout, name) == (
            f"{name}: created (12 partitions, replication factor 3, retention.ms={retention}, "
            "compression.type=snappy, max.message.bytes=1048576, min.insync.replicas=2)")


def test_on_one_broker_the_capped_settings_are_printed(cli_env):
    """On a one-broker cluster (the dev broker) `topics create` prints replication factor 1
    and min.insync.replicas=1, as the broker has them, and says both were capped."""
    with DevBroker() as broker:
        cli_env(KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers)
        result = CliRunner().invoke(main, ["topics", "create"])
    assert result.exit_code == 0, result.output
    for name in ("from_openalgo_order_events", "from_esb_order_events",
                 "from_esb_order_events.dlq"):
        line = line_of(result.stdout, name)
        assert re.fullmatch(rf"{re.escape(name)}: created \(5 partitions, replication factor "
                            r"1, retention\.ms=\d+, compression\.type=snappy, "
                            r"max\.message\.bytes=1048576, min\.insync\.replicas=1\)", line), line
        assert (f"warning: {name}: replication factor 3 capped to 1, the number of brokers in "
                "this cluster, and min.insync.replicas 2 to 1 (a production cluster should "
                "have at least 3 brokers)") in result.stderr


def test_a_count_of_one_is_singular(cli_env):
    """On one broker with one-partition topics, topics create, topics describe and check say
    "1 partition" and "1 broker", never "1 partitions" or "partition(s)"."""
    with DevBroker() as broker:
        cli_env(KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers, ORDER_EVENT_MODE="KAFKA")
        runner = CliRunner()
        outputs = [runner.invoke(main, args) for args in (
            ["topics", "create", "--partitions", "1"], ["topics", "describe"], ["check"])]
    assert [result.exit_code for result in outputs] == [0, 0, 0], [r.output for r in outputs]
    created, described, checked = (result.stdout for result in outputs)
    assert "from_openalgo_order_events: created (1 partition, replication factor 1," in created
    assert "from_openalgo_order_events: 1 partition\n" in described
    assert f"answered: 1 broker {broker.bootstrap_servers.split(':')[0]}" in checked
    assert "Topic from_openalgo_order_events: 1 partition\n" in checked
    for text in (created, described, checked):
        assert not re.search(r"\b1 (partitions|brokers)\b|\(s\)", text), text
