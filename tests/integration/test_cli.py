"""The operators' commands against a real broker: check, topics, tail and replay."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from openalgo_events import KafkaEventPublisher, Settings
from openalgo_events.cli import main
from openalgo_events.spool import REPLAY_HEADER
from tests.support import create_topic, read_topic

pytestmark = pytest.mark.broker


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def _publisher(bootstrap: str, topic: str, spool: Path) -> KafkaEventPublisher:
    settings = Settings.from_env({"KAFKA_SPOOL_PATH": str(spool)})
    return KafkaEventPublisher(bootstrap, topic, settings=settings)


def _topic_names(bootstrap: str) -> set[str]:
    return set(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics)


def test_check_passes_and_prints_the_topics_partitions(kafka_bootstrap, cli_env, topic):
    """With a reachable broker, check exits 0 and shows the order topic's partition count."""
    create_topic(kafka_bootstrap, topic, partitions=3)
    cli_env(ORDER_EVENT_MODE="KAFKA", KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
            KAFKA_ORDER_EVENTS_TOPIC=topic)
    result = run("check")
    assert result.exit_code == 0, result.output + result.stderr
    assert result.stdout.splitlines()[0] == "OK: publishing to Kafka would work."
    assert f"Topic {topic}: 3 partitions" in result.output
    assert "KAFKA_PRODUCER_LINGER_MS" not in result.output  # settings only with --verbose


def test_check_reports_a_missing_topic_without_creating_it(kafka_bootstrap, cli_env, topic):
    """check says first that a topic does not exist (exit 3), and asking did not create it."""
    cli_env(ORDER_EVENT_MODE="BOTH", KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
            KAFKA_ORDER_EVENTS_TOPIC=topic)
    result = run("check")
    assert result.exit_code == 3, result.stderr
    assert result.stdout.splitlines()[0].startswith(f"Not ready: topic {topic} does not exist")
    assert f"Topic {topic}: does not exist yet" in result.output
    assert topic not in _topic_names(kafka_bootstrap)


def test_topics_create_is_idempotent_and_describe_shows_the_layout(kafka_bootstrap, cli_env,
                                                                   topic):
    """topics create makes the order, ESB and dead-letter topics with 5 partitions, 7 days / 24
    hours retention, snappy and 1 MiB, and the relay's compacted positions topic; a second run
    reports all four as existing, with the settings asked for, and succeeds; describe shows
    them."""
    esb, positions = f"{topic}-esb", f"{topic}-positions"
    cli_env(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, KAFKA_ORDER_EVENTS_TOPIC=topic,
            KAFKA_ESB_EVENTS_TOPIC=esb, KAFKA_RELAY_POSITIONS_TOPIC=positions)
    first = run("topics", "create")
    assert first.exit_code == 0, first.stderr
    for name in (topic, esb, f"{esb}.dlq"):
        assert f"{name}: created (5 partitions" in first.output
    assert f"{positions}: created (1 partition" in first.output
    second = run("topics", "create")
    assert second.exit_code == 0, second.stderr
    assert second.output.count("already exists") == 4
    assert "warning" not in second.output, second.output
    described = run("topics", "describe")
    assert described.exit_code == 0, described.stderr
    order_part, esb_part = described.output.split(f"{esb}: ", 1)
    assert f"{topic}: 5 partitions" in order_part
    assert "retention.ms = 604800000" in order_part
    assert "compression.type = snappy" in order_part
    assert "max.message.bytes = 1048576" in order_part
    assert "retention.ms = 86400000" in esb_part.split(f"{esb}.dlq")[0]


def test_tail_sees_an_event_published_after_it_started(kafka_bootstrap, cli_env, topic,
                                                       tmp_path):
    """A running tail (a real process) prints, as JSON, an event published after it started,
    filtered by user."""
    create_topic(kafka_bootstrap, topic, partitions=3)
    cli_env(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, KAFKA_ORDER_EVENTS_TOPIC=topic)
    tail = subprocess.Popen(
        [sys.executable, "-m", "openalgo_events", "tail", "--json", "--user", "alice",
         "--max-messages", "1", "--timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert tail.stderr is not None
        ready = tail.stderr.readline()
        assert ready.startswith(f"following {topic} (3 partitions) from the end"), ready
        publisher = _publisher(kafka_bootstrap, topic, tmp_path / "spool")
        publisher.publish_order_event("bob", "INFY-EQ", "SELL", "ORD-B", "live")
        sent = publisher.publish_order_event("alice", "SBIN-EQ", "BUY", "ORD-A", "live")
        assert publisher.flush(10) == 0  # close() never waits: the relay delivers
        publisher.close()
        out, err = tail.communicate(timeout=60)
    finally:
        tail.kill()
        tail.wait(10)
    assert tail.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == sent.to_dict()


def test_tail_since_filters_by_time_type_and_user_as_a_table(kafka_bootstrap, cli_env, topic,
                                                             tmp_path):
    """tail --since skips older records and shows only the chosen user's and type's events, one
    aligned row each."""
    create_topic(kafka_bootstrap, topic)
    old = Producer({"bootstrap.servers": kafka_bootstrap})
    old.produce(topic, json.dumps({"event_type": "order_event", "user_id": "alice",
                                   "timestamp": "2026-01-01T00:00:00Z",
                                   "data": {"orderid": "ORD-OLD"}}).encode(), b"alice",
                timestamp=int((time.time() - 7200) * 1000))
    assert old.flush(10) == 0
    publisher = _publisher(kafka_bootstrap, topic, tmp_path / "spool")
    publisher.publish_order_event("alice", "SBIN-EQ", "BUY", "ORD-A1", "live")
    publisher.publish_order_event("bob", "INFY-EQ", "SELL", "ORD-B1", "live")
    publisher.publish("order_update", "alice", orderid="ORD-A1", order_status="complete")
    publisher.publish_order_event("alice", "TCS-EQ", "BUY", "ORD-A2", "live")
    assert publisher.flush(10) == 0  # close() never waits: the relay delivers
    publisher.close()
    cli_env(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, KAFKA_ORDER_EVENTS_TOPIC=topic)
    result = run("tail", "--since", "1h", "--user", "alice", "--event-type", "order_event",
                 "--max-messages", "2", "--timeout", "30")
    assert result.exit_code == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["TIME", "EVENT", "TYPE", "USER", "DETAILS"]
    assert len(rows) == 2
    assert "orderid=ORD-A1 symbol=SBIN-EQ" in rows[0] and "orderid=ORD-A2" in rows[1]
    assert all(row.split()[1:3] == ["order_event", "alice"] for row in rows)


def test_replay_republishes_exactly_the_window_while_the_app_holds_the_spool(
        kafka_bootstrap, cli_env, topic, tmp_path):
    """With the publisher still running (its journal open), replay re-sends only the chosen
    user's delivered events inside the window, same key/value/headers plus openalgo_replay: 1;
    a dry run sends nothing."""
    create_topic(kafka_bootstrap, topic, partitions=2)
    spool = tmp_path / "spool"
    publisher = _publisher(kafka_bootstrap, topic, spool)
    try:
        publisher.publish_order_event("alice", "SBIN-EQ", "BUY", "ORD-1", "live")  # too old
        # the window starts after the first event was journaled (its created time)
        since = datetime.fromtimestamp(time.time(), UTC).isoformat()
        in_window = [publisher.publish_order_event("alice", "TCS-EQ", "BUY", "ORD-2", "live"),
                     publisher.publish("order_update", "alice", orderid="ORD-2",
                                       order_status="complete")]
        publisher.publish_order_event("bob", "INFY-EQ", "SELL", "ORD-3", "live")
        assert publisher.flush(10) == 0
        cli_env(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, KAFKA_ORDER_EVENTS_TOPIC=topic,
                KAFKA_SPOOL_PATH=str(spool))
        dry = run("replay", "--since", since, "--user", "alice", "--dry-run")
        assert dry.exit_code == 0, dry.stderr
        assert "would re-publish 2 events of user alice" in dry.output
        assert all(event.event_id in dry.output for event in in_window)
        result = run("replay", "--since", since, "--user", "alice")
        assert result.exit_code == 0, result.stderr
        assert "re-published 2 events of user alice" in result.output
    finally:
        publisher.close(10)
    # Drain until quiet: 4 originals and 2 copies, nothing from the dry run.
    messages = read_topic(kafka_bootstrap, topic, 7, timeout=3)
    replayed = [m for m in messages if dict(m.headers() or []).get(REPLAY_HEADER) == b"1"]
    assert len(messages) == 6
    assert sorted(json.loads(m.value())["event_id"] for m in replayed) == sorted(
        e.event_id for e in in_window)
    originals = {json.loads(m.value())["event_id"]: m for m in messages if m not in replayed}
    for copy in replayed:
        original = originals[json.loads(copy.value())["event_id"]]
        assert copy.key() == original.key() == b"alice"
        assert copy.value() == original.value()
        assert copy.headers() == [*original.headers(), (REPLAY_HEADER, b"1")]


def test_describe_of_a_missing_topic_fails_with_a_hint_that_works(kafka_bootstrap, cli_env,
                                                                  topic):
    """describe of a topic that does not exist exits 1 in one line: for one of the package's
    topics the hint is 'topics create', which then makes describe succeed; for a stranger's
    name the hint says to check the name and does not promise that create makes it."""
    esb = f"{topic}-esb"
    cli_env(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, KAFKA_ORDER_EVENTS_TOPIC=topic,
            KAFKA_ESB_EVENTS_TOPIC=esb)
    ours = run("topics", "describe", topic)
    assert ours.exit_code == 1
    assert ours.stderr.strip() == (f"Error: topic {topic} does not exist; create it with "
                                   "'openalgo-events topics create'")
    assert run("topics", "create").exit_code == 0
    assert run("topics", "describe", topic).exit_code == 0
    stranger = run("topics", "describe", "no_such_topic")
    assert stranger.exit_code == 1
    [line] = stranger.stderr.strip().splitlines()
    assert line.startswith("Error: topic no_such_topic does not exist and is none of this "
                           "configuration's topics")
    assert "check the name" in line and "topics create" not in line
    assert "no_such_topic" not in _topic_names(kafka_bootstrap)


def test_tail_of_a_missing_topic_fails_with_a_hint_that_works(kafka_bootstrap, cli_env, topic):
    """tail of a missing topic exits 1 in one line: the order topic's hint is 'topics create'
    (never 'it appears with the first event', which a cluster without auto-creation breaks);
    a mistyped --topic is told to check the name."""
    cli_env(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, KAFKA_ORDER_EVENTS_TOPIC=topic)
    ours = run("tail", "--timeout", "5")
    assert ours.exit_code == 1
    assert ours.stderr.strip() == (f"Error: topic {topic} does not exist; create it with "
                                   "'openalgo-events topics create'")
    typo = run("tail", "--topic", f"{topic}-typo", "--timeout", "5")
    assert typo.exit_code == 1
    assert typo.stderr.strip() == (f"Error: topic {topic}-typo does not exist; check --topic "
                                   f"(the order topic is {topic}, KAFKA_ORDER_EVENTS_TOPIC)")
    assert topic not in _topic_names(kafka_bootstrap)


def test_a_positions_topic_the_relay_created_is_the_one_topics_create_plans(kafka_bootstrap,
                                                                             cli_env, topic):
    """The relay creates the positions topic at its first exactly-once start when nobody ran
    topics create; topics create then finds it with the settings it plans (no warning)."""
    from openalgo_events.relay.positions import ensure_topic

    positions = f"{topic}-positions"
    assert ensure_topic({"bootstrap.servers": kafka_bootstrap}, positions) == (True, None)
    cli_env(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, KAFKA_ORDER_EVENTS_TOPIC=topic,
            KAFKA_ESB_EVENTS_TOPIC=f"{topic}-esb", KAFKA_RELAY_POSITIONS_TOPIC=positions)
    result = run("topics", "create")
    assert result.exit_code == 0, result.stderr
    assert f"{positions}: already exists" in result.output
    assert "warning" not in result.output, result.output
