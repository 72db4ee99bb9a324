"""No poison pill (issue 15) on a real broker: an event Kafka refuses never blocks the others, a
stored record the relay cannot read is set aside, one size limit holds end to end, and no
credential reaches the topic or the spool files."""

from __future__ import annotations

import glob
import json
import logging
import os
import sqlite3
import time
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka import KafkaError, KafkaException

from openalgo_events import KafkaEventPublisher, Settings
from openalgo_events.cli import main
from openalgo_events.devbroker import DevBroker, free_port
from tests.integration.relay_support import relay_errors, relay_log, relay_metrics, stop_relays
from tests.support import create_topic, read_topic, wait_for
from tests.unit.test_secrets import corpus_data

pytestmark = pytest.mark.broker


def settings(tmp_path, **env: str) -> Settings:
    return Settings.from_env({"KAFKA_SPOOL_PATH": str(tmp_path / "spool.db"),
                              "KAFKA_STALL_TIMEOUT_SECONDS": "5", **env}, env_file=None)


def publisher(bootstrap: str, topic: str, tmp_path, **env: str) -> KafkaEventPublisher:
    return KafkaEventPublisher(bootstrap, topic, settings=settings(tmp_path, **env))


def order(p: KafkaEventPublisher, user: str, orderid: str, **extra: Any) -> str:
    return p.publish_order_event(user, "SBIN", "BUY", orderid, "live", **extra).event_id


def ids_on(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list[str]:
    return [json.loads(m.value())["event_id"]
            for m in read_topic(bootstrap, topic, count, timeout=timeout)]


def offline(bootstrap: str, tmp_path, topic: str, **env: str) -> KafkaEventPublisher:
    """A publisher whose relay cannot reach the brokers (it resolves their IPv4 addresses as
    IPv6 only): what it publishes stays in the spool. The spool keeps the cluster and topic of
    the publishers that come after it (spooldir.Identity)."""
    return publisher(bootstrap, topic, tmp_path, KAFKA_LIBRDKAFKA_BROKER_ADDRESS_FAMILY="v6",
                     **env)


def stop_app_relay(tmp_path) -> None:
    """Stop the relay of the spool in ``tmp_path`` as an app restart does."""
    stop_relays(str(tmp_path / "spool.db"))


def test_event_refused_at_produce_is_set_aside_and_the_next_one_flows(
        kafka_bootstrap, topic, tmp_path, caplog):
    """An event librdkafka refuses at produce for good (over its message.max.bytes) is set aside
    as rejected (ERROR naming its id once in the relay process's log, counted on its /metrics,
    in the host's health and in 'spool rejected'), and the events published after it, by the
    same user, are delivered."""
    create_topic(kafka_bootstrap, topic)
    caplog.set_level(logging.INFO, logger="openalgo_events")
    p = publisher(kafka_bootstrap, topic, tmp_path, KAFKA_LIBRDKAFKA_MESSAGE_MAX_BYTES="20000")
    try:
        big = order(p, "alice", "1", note="x" * 30_000)
        after = [order(p, "alice", str(i)) for i in range(2, 6)]
        assert ids_on(kafka_bootstrap, topic, 4) == after
        # the delivery reports reach the status file a moment after the messages the topic
        health = wait_for(lambda: (h := p.health())["spool_rejected"] == 1
                          and h["spool_depth"] == 0 and h, message="the big event set aside")
        assert health["healthy"] and health["relay_running"]
        listed = CliRunner().invoke(main, ["spool", "rejected", "--json", "--spool",
                                           str(tmp_path / "spool.db")])
        assert listed.exit_code == 0, listed.output
        rejected = [json.loads(line) for line in listed.output.splitlines()]
        assert [(r["event_id"], r["event_type"]) for r in rejected] == [(big, "order_event")]
        assert "MSG_SIZE_TOO_LARGE" in rejected[0]["reason"]
        # the relay process logs it (its log file), once; the host's log stays quiet
        errors = relay_errors(str(tmp_path / "spool.db"))
        assert len(errors) == 1 and big in errors[0] and "spool retry" in errors[0], errors
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert ('openalgo_events_rejected_total{event_type="order_event",transport="kafka"} 1.0'
                in relay_metrics(health))
    finally:
        p.close(5)


def test_refused_backlog_event_after_restart_is_set_aside_then_retried(
        kafka_bootstrap, topic, tmp_path):
    """Spooled while the broker was away, an event the restarted app's producer refuses (its
    limit was lowered) does not block the backlog behind it; 'spool rejected' lists it and,
    once the limit is raised again, 'spool retry', run while the app's relay process holds the
    spool, sends it with its event id, once."""
    create_topic(kafka_bootstrap, topic)
    spool_path = str(tmp_path / "spool.db")
    first = offline(kafka_bootstrap, tmp_path, topic)
    big = order(first, "alice", "1", note="y" * 200_000)
    backlog = [order(first, "alice", str(i)) for i in range(2, 5)]
    assert first.close(0.5) == 4
    stop_app_relay(tmp_path)  # the app restarts, and its relay with it
    second = publisher(kafka_bootstrap, topic, tmp_path, ORDER_EVENT_MAX_MESSAGE_BYTES="100000")
    try:
        order(second, "bob", "10")  # the restarted app publishes: its relay starts
        assert ids_on(kafka_bootstrap, topic, 4)[:3] == backlog
        wait_for(lambda: (h := second.health())["spool_depth"] == 0 and h["spool_rejected"] == 1,
                 message="backlog settled, the big event set aside")
    finally:
        second.close(5)
    stop_app_relay(tmp_path)  # restarted once more, with the limit raised again
    listed = CliRunner().invoke(main, ["spool", "rejected", "--spool", spool_path])
    assert listed.exit_code == 0 and big in listed.output and "1 rejected" in listed.output
    third = publisher(kafka_bootstrap, topic, tmp_path)
    try:
        order(third, "bob", "11")
        wait_for(lambda: third.health()["relay_running"], message="the new relay")
        # while that relay holds the spool
        retried = CliRunner().invoke(main, ["spool", "retry", big, "--spool", spool_path])
        assert retried.exit_code == 0, retried.output
        on_topic = ids_on(kafka_bootstrap, topic, 6)
        # behind the backlog; it may pass an event the new relay has not read yet
        assert on_topic[:3] == backlog and on_topic[3:].count(big) == 1, on_topic
        wait_for(lambda: (h := third.health())["spool_depth"] == 0 and h["spool_rejected"] == 0,
                 message="retry delivered")
    finally:
        third.close(5)


def test_unreadable_stored_record_is_quarantined(kafka_bootstrap, topic, tmp_path, caplog):
    """A stored record the relay cannot parse (a 400-digit integer, as an earlier version
    stored it) is set aside with its id logged and counted; the records after it are sent."""
    create_topic(kafka_bootstrap, topic)
    first = offline(kafka_bootstrap, tmp_path, topic)
    bad = order(first, "alice", "1")
    good = [order(first, "alice", str(i)) for i in range(2, 5)]
    wait_for(lambda: first.health()["spool_depth"] == 4, message="the events in SQLite")
    assert first.close(0.5) == 4
    stop_app_relay(tmp_path)
    with sqlite3.connect(tmp_path / "spool.db") as db:
        db.execute("UPDATE events SET value = ? WHERE event_id = ?",
                   (b'{"event_id":"' + bad.encode() + b'","quantity":1' + b"0" * 400 + b"}", bad))
    second = publisher(kafka_bootstrap, topic, tmp_path)
    try:
        order(second, "bob", "10")  # the restarted app publishes: its relay starts
        assert ids_on(kafka_bootstrap, topic, 4)[:3] == good
        health = wait_for(lambda: (h := second.health())["spool_rejected"] == 1 and h,
                          message="quarantined")
        listed = CliRunner().invoke(main, ["spool", "rejected", "--json", "--spool",
                                           str(tmp_path / "spool.db")])
        assert [json.loads(line)["event_id"] for line in listed.output.splitlines()] == [bad]
        assert relay_errors(str(tmp_path / "spool.db"), bad)
        assert "openalgo_events_quarantined_total 1.0" in relay_metrics(health)
    finally:
        second.close(5)


def test_one_size_limit_end_to_end(kafka_bootstrap, topic, tmp_path):
    """An event of about 1,000,354 bytes (under the 1 MiB limit, over librdkafka's default
    message.max.bytes) is delivered, and so is the event after it."""
    create_topic(kafka_bootstrap, topic)
    p = publisher(kafka_bootstrap, topic, tmp_path)
    try:
        big = order(p, "alice", "1", note="z" * 1_000_000)
        nxt = order(p, "alice", "2")
        assert ids_on(kafka_bootstrap, topic, 2) == [big, nxt]
        assert p.flush(10) == 0
    finally:
        p.close(10)


def test_secret_corpus_never_reaches_the_topic_or_the_spool(kafka_bootstrap, topic, tmp_path):
    """Every corpus credential, top level and nested, is absent from every byte on the topic
    (keys, values, headers) and in every spool file (SQLite, WAL, journal)."""
    create_topic(kafka_bootstrap, topic)
    p = publisher(kafka_bootstrap, topic, tmp_path)
    try:
        sent = p.publish("order_event", "alice", corpus_data()).event_id
        messages = read_topic(kafka_bootstrap, topic, 1)
        assert [json.loads(m.value())["event_id"] for m in messages] == [sent]
        on_topic = b"".join(m.value() + (m.key() or b"") + b"".join(
            v for _, v in m.headers() or []) for m in messages)
        assert b"LEAK-" not in on_topic
        assert p.flush(10) == 0
        files = [name for name in glob.glob(str(tmp_path / "**"), recursive=True)
                 if os.path.isfile(name)]  # the trail, its WAL, the writers' journals, the log
        assert any(name.endswith("spool.db") for name in files)
        assert any(".journal." in name for name in files)
        for name in files:
            with open(name, "rb") as handle:
                assert b"LEAK-" not in handle.read(), name
    finally:
        p.close(5)


@pytest.mark.slow
def test_broker_down_20s_logs_a_handful_of_lines(tmp_path, topic, caplog):
    """With the broker killed for 20 s while events keep coming, the package logs one WARNING
    when it goes down and one when it is back (librdkafka's per-connection failures at debug),
    and every event published meanwhile is delivered."""
    port = free_port()
    broker = DevBroker(port).start()
    create_topic(broker.bootstrap_servers, topic)
    p = publisher(broker.bootstrap_servers, topic, tmp_path)
    try:
        order(p, "alice", "0")
        assert p.flush(10) == 0
        caplog.set_level(logging.DEBUG, logger="openalgo_events")
        caplog.clear()
        logged = len(relay_log(str(tmp_path / "spool.db")))
        broker.stop()
        start = time.monotonic()
        for i in range(20):  # one event a second while the broker is away
            time.sleep(max(0.0, start + i - time.monotonic()))
            order(p, "alice", str(i + 1))
        broker = DevBroker(port).start()  # an empty broker at the same address
        # the dev broker creates topics on demand: the relay's producer may make it first
        try:
            create_topic(broker.bootstrap_servers, topic)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
        wait_for(lambda: p.health()["spool_depth"] == 0, 60, message="the backlog delivered")
        # what the relay process logged meanwhile (at INFO: its log's level), and the host
        lines = relay_log(str(tmp_path / "spool.db"))[logged:]
        lines += [(r.levelname, r.getMessage()) for r in caplog.records
                  if r.levelno >= logging.INFO]
        assert len(lines) <= 4, lines
        assert sum("unreachable" in text for _, text in lines) == 1, lines
        assert sum("reachable again" in text for _, text in lines) == 1, lines
        assert all(level == "WARNING" for level, _ in lines), lines
    finally:
        p.close(5)
        broker.stop()


def test_topic_smaller_than_the_publish_limit_is_warned_about(kafka_bootstrap, topic, tmp_path,
                                                             caplog, cli_env):
    """A topic whose max.message.bytes is below ORDER_EVENT_MAX_MESSAGE_BYTES draws a warning
    naming both numbers and the fix, from 'check' and once at the relay's start-up."""
    # and wait for its leader: a cluster answers CreateTopics before every broker knows it
    create_topic(kafka_bootstrap, topic, configs={"max.message.bytes": "5000"})
    cli_env(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, KAFKA_ORDER_EVENTS_TOPIC=topic,
            ORDER_EVENT_MODE="KAFKA", KAFKA_SPOOL_PATH=str(tmp_path / "check.db"))
    checked = CliRunner().invoke(main, ["check"])
    assert checked.exit_code == 0, checked.output
    assert "max.message.bytes" in checked.output and "5000" in checked.output
    assert "ORDER_EVENT_MAX_MESSAGE_BYTES=5000" in checked.output
    p = publisher(kafka_bootstrap, topic, tmp_path)
    try:
        order(p, "alice", "1")  # the first publish starts the relay
        wait_for(lambda: [text for level, text in relay_log(str(tmp_path / "spool.db"))
                          if "5000" in text and level == "WARNING"],
                 message="the relay's start-up warning")
    finally:
        p.close(5)


def test_global_condition_keeps_everything_and_is_logged_once(kafka_bootstrap, topic,
                                                              tmp_path, caplog):
    """An authentication failure reported by librdkafka's error callback (a real KafkaError,
    fed to the live producer's callback: the test broker has no SASL) stops sending without a
    rebuild, is named in health, is logged at ERROR once however often it repeats and never as
    "unreachable"; when the broker answers metadata again the events go out in order and one
    line says it is over."""

    create_topic(kafka_bootstrap, topic)
    caplog.set_level(logging.INFO, logger="openalgo_events")
    # the relay in this process (the same KafkaTransport a relay process runs): its callback
    # is fed; tests/integration/test_cluster_paths.py has a real SASL failure in the process
    p = publisher(kafka_bootstrap, topic, tmp_path, KAFKA_SPOOL_PATH=":memory:")
    transport: Any = p.transport
    try:
        order(p, "alice", "0")
        assert p.flush(10) == 0
        rebuilds = transport.rebuilds
        failure = KafkaError(KafkaError._AUTHENTICATION,
                             "SASL authentication error: Authentication failed")
        for _ in range(5):
            transport._on_error(failure)
        transport._on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
        health = p.health()
        assert health["condition"] == "authentication failed" and not health["healthy"]
        assert "KAFKA_SASL_USERNAME" in health["condition_detail"]
        ids = [order(p, "alice", str(i)) for i in range(1, 4)]
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "authentication failed" in errors[0], errors
        assert not any("unreachable" in r.getMessage() for r in caplog.records)
        wait_for(lambda: p.health()["condition"] is None, 30, message="the condition over")
        assert p.flush(10) == 0
        on_topic = ids_on(kafka_bootstrap, topic, 4)
        assert [i for i in on_topic if i in ids] == ids
        assert transport.rebuilds <= rebuilds + 1  # one resend when it is over, no loop
        assert sum("is over" in r.getMessage() for r in caplog.records) == 1
    finally:
        p.close(5)


def test_missing_topic_is_a_global_condition_until_it_is_created(kafka_bootstrap, topic,
                                                                 tmp_path, caplog):
    """With auto-creation off and the topic absent, health names "topic missing", one ERROR
    line names the topic and 'openalgo-events topics create', events are kept and nothing is
    rebuilt while the relay keeps probing; once the topic is created they arrive in order."""
    caplog.set_level(logging.INFO, logger="openalgo_events")
    # the relay in this process, to count its probes and rebuilds; the relay process's log and
    # health on a missing topic: tests/integration/test_cluster_paths.py
    p = publisher(kafka_bootstrap, topic, tmp_path, KAFKA_SPOOL_PATH=":memory:",
                  KAFKA_LIBRDKAFKA_ALLOW_AUTO_CREATE_TOPICS="false")
    transport: Any = p.transport
    try:
        wait_for(lambda: p.health()["condition"] == "topic missing", 15,
                 message="the condition named")
        ids = [order(p, "alice", str(i)) for i in range(3)]
        health = p.health()
        assert not health["healthy"] and health["spool_depth"] == 3
        assert "openalgo-events topics create" in health["condition_detail"]
        wait_for(lambda: transport.condition_probes >= 2, 20, message="two probes")
        assert transport.rebuilds == 0
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and topic in errors[0] and "topics create" in errors[0], errors
        create_topic(kafka_bootstrap, topic)
        first_seen = list(dict.fromkeys(ids_on(kafka_bootstrap, topic, 3)))
        assert first_seen == ids
        wait_for(lambda: p.health()["condition"] is None, 15, message="the condition over")
        assert transport.rebuilds <= 1  # the one resend when it is over
        assert sum("is over" in r.getMessage() for r in caplog.records) == 1
    finally:
        p.close(5)
