"""No poison pill on a real broker: an event Kafka refuses never blocks the others (nor takes
its batch neighbours with it), a journal frame the relay cannot read is set aside, one size
limit holds end to end, flush tells the truth about refused events, and no credential reaches
the topic or the spool files."""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
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
    return Settings.from_env({"KAFKA_SPOOL_PATH": str(tmp_path / "spool"),
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
    the publishers that come after it (``spool.identity``)."""
    return publisher(bootstrap, topic, tmp_path, KAFKA_LIBRDKAFKA_BROKER_ADDRESS_FAMILY="v6",
                     **env)


def stop_app_relay(tmp_path) -> None:
    """Stop the relay of the spool in ``tmp_path`` as an app restart does."""
    stop_relays(str(tmp_path / "spool"))


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
                                           str(tmp_path / "spool")])
        assert listed.exit_code == 0, listed.output
        rejected = [json.loads(line) for line in listed.output.splitlines()]
        assert [(r["event_id"], r["event_type"]) for r in rejected] == [(big, "order_event")]
        assert "MSG_SIZE_TOO_LARGE" in rejected[0]["reason"]
        # the relay process logs it (its log file), once; the host's log stays quiet
        errors = relay_errors(str(tmp_path / "spool"))
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
    spool_path = str(tmp_path / "spool")
    first = offline(kafka_bootstrap, tmp_path, topic)
    big = order(first, "alice", "1", note="y" * 200_000)
    backlog = [order(first, "alice", str(i)) for i in range(2, 5)]
    assert first.close(0.5) == 4
    stop_app_relay(tmp_path)  # the app restarts, and its relay with it
    second = publisher(kafka_bootstrap, topic, tmp_path, ORDER_EVENT_MAX_MESSAGE_BYTES="100000")
    try:
        order(second, "bob", "10")  # the restarted app publishes: its relay starts
        # one user's order holds; another user's event may come first (another journal)
        assert [i for i in ids_on(kafka_bootstrap, topic, 4) if i in backlog] == backlog
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
        assert [i for i in on_topic if i in backlog] == backlog, on_topic
        assert on_topic.index(big) > on_topic.index(backlog[-1]) and on_topic.count(big) == 1
        wait_for(lambda: (h := third.health())["spool_depth"] == 0 and h["spool_rejected"] == 0,
                 message="retry delivered")
    finally:
        third.close(5)


def test_unreadable_journal_frame_is_quarantined(kafka_bootstrap, topic, tmp_path):
    """A journal frame whose CRC is right but whose metadata the relay cannot read (a
    400-digit integer) is set aside, logged with its position and counted; the records after
    it are sent."""
    from openalgo_events import Envelope
    from openalgo_events.spool import format as fmt

    create_topic(kafka_bootstrap, topic)
    first = offline(kafka_bootstrap, tmp_path, topic)
    ids = [order(first, "alice", str(i)) for i in range(1, 5)]
    assert first.close(0.5) == 4
    stop_app_relay(tmp_path)
    (segment,) = (tmp_path / "spool" / fmt.WRITERS).glob("*/1.seg")
    data = segment.read_bytes()
    end, _payload = fmt.frame_at(data, 0)
    envelope = Envelope("order_event", "alice", {"orderid": "bad"})
    bad = _raw_frame(b'[1,"' + envelope.event_id.encode() + b'","order_event","alice",'
                     + b"1" * 400 + b',0,"t","s",null]', envelope.value)
    segment.write_bytes(bad + data[end:])  # the first record replaced by an unreadable one
    second = publisher(kafka_bootstrap, topic, tmp_path)
    try:
        order(second, "bob", "10")  # the restarted app publishes: its relay starts
        assert [i for i in ids_on(kafka_bootstrap, topic, 4) if i in ids] == ids[1:]
        health = wait_for(lambda: (h := second.health())["spool_depth"] == 0 and h,
                          message="settled")
        assert relay_errors(str(tmp_path / "spool"), "an unreadable frame", "segment 1 at "
                            "offset 0")
        assert "openalgo_events_quarantined_total 1.0" in relay_metrics(health)
    finally:
        second.close(5)


def _raw_frame(meta: bytes, value: bytes) -> bytes:
    import zlib

    from openalgo_events.spool import format as fmt

    payload = meta + b"\n" + value
    return fmt.HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def test_a_record_the_broker_refuses_takes_none_of_its_batch_neighbours_with_it(
        kafka_bootstrap, topic, tmp_path):
    """A topic taking records of at most 2,000 bytes: a 253-byte order event, a 6 KB
    notification and another order event, published together (one batch): the broker refuses
    the whole batch, yet only the notification is set aside (MSG_SIZE_TOO_LARGE, alone); both
    order events reach the topic, and flush counts the refused one as not on the topic."""
    create_topic(kafka_bootstrap, topic, configs={"max.message.bytes": "2000"})
    p = publisher(kafka_bootstrap, topic, tmp_path)
    try:
        order(p, "alice", "warm-up")
        assert p.flush(20) == 0
        for run in range(1, 4):
            before = order(p, "alice", "before")
            noise = secrets.token_urlsafe(4500)  # 6 KB that snappy cannot shrink below 2,000
            big = p.publish_order_notification("alice", "SBIN", "info", noise).event_id
            after = order(p, "alice", "after")
            assert p.flush(30) == run  # each run's big one is set aside: done, not on the topic
            on_topic = set(ids_on(kafka_bootstrap, topic, 100, timeout=5))
            assert {before, after} <= on_topic and big not in on_topic
        listed = CliRunner().invoke(main, ["spool", "rejected", "--json", "--spool",
                                           str(tmp_path / "spool")])
        rejected = [json.loads(line) for line in listed.output.splitlines()]
        assert [r["event_type"] for r in rejected] == ["order_notification"] * 3, rejected
        assert all("MSG_SIZE_TOO_LARGE" in r["reason"] for r in rejected)
        assert p.flush(10) == 3  # the three refused are not on the topic, and flush says so
    finally:
        p.close(5)


def test_a_record_refused_for_its_timestamp_loses_only_itself(kafka_bootstrap, topic, tmp_path,
                                                              monkeypatch):
    """A topic refusing records older than 4 s (message.timestamp.before.max.ms): an event
    that waited 5 s in the journal (its relay frozen) is refused on its own as
    INVALID_TIMESTAMP and set aside, and the fresh events read and sent with it in one batch
    are delivered."""
    create_topic(kafka_bootstrap, topic,
                 configs={"message.timestamp.before.max.ms": "4000",
                          "message.timestamp.type": "CreateTime"})
    monkeypatch.setenv("OPENALGO_EVENTS_RELAY_AUTOSTART", "FALSE")
    p = publisher(kafka_bootstrap, topic, tmp_path)
    log = open(tmp_path / "relay.err", "w")  # noqa: SIM115 (closed below)
    relay = subprocess.Popen([sys.executable, "-m", "openalgo_events.relay", "--spool",
                              str(tmp_path / "spool")],
                             env={**os.environ, "PYTHONPATH": os.getcwd(),
                                  "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                                  "KAFKA_ORDER_EVENTS_TOPIC": topic}, stderr=log)
    try:
        order(p, "alice", "warm-up")
        assert p.flush(30) == 0, (tmp_path / "relay.err").read_text()
        os.kill(relay.pid, signal.SIGSTOP)
        old = order(p, "alice", "old")
        time.sleep(5)  # the point of the test: this event grows older than the topic accepts
        fresh = [order(p, "alice", str(i)) for i in range(3)]
        os.kill(relay.pid, signal.SIGCONT)
        assert p.flush(30) == 1, (tmp_path / "relay.err").read_text()
        on_topic = ids_on(kafka_bootstrap, topic, 4)
        assert on_topic[1:] == fresh, on_topic
        from openalgo_events.spool import Spool

        (rejected,) = Spool(str(tmp_path / "spool")).rejected()
        assert rejected.event_id == old and "INVALID_TIMESTAMP" in rejected.reason
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(relay.pid, signal.SIGCONT)
        p.close(5)
        relay.terminate()
        relay.wait(20)
        log.close()


def test_spool_retry_with_no_relay_running_starts_one_and_says_so(kafka_bootstrap, topic,
                                                                  tmp_path, cli_env):
    """'spool retry' when the relay a publisher started is gone: it says no relay was running,
    starts one, and the event reaches the topic (with its id) within seconds."""
    create_topic(kafka_bootstrap, topic)
    p = publisher(kafka_bootstrap, topic, tmp_path, KAFKA_LIBRDKAFKA_MESSAGE_MAX_BYTES="20000")
    big = order(p, "alice", "1", note="x" * 30_000)
    assert p.flush(20) == 1  # set aside: done, yet not on the topic
    assert p.close(10) == 1
    stop_app_relay(tmp_path)
    cli_env(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, KAFKA_ORDER_EVENTS_TOPIC=topic,
            KAFKA_SPOOL_PATH=str(tmp_path / "spool"))
    retried = CliRunner().invoke(main, ["spool", "retry", big])
    assert retried.exit_code == 0, retried.output
    assert "no relay was running, so one was started" in retried.output
    assert ids_on(kafka_bootstrap, topic, 1) == [big]
    wait_for(lambda: not Path(tmp_path / "spool").joinpath("writers").exists()
             or CliRunner().invoke(main, ["spool", "rejected"]).output.startswith("0 "), 20,
             message="the rejected event gone from the list")


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
        assert any(name.endswith(".seg") for name in files)
        assert any(name.endswith("ledger") for name in files)
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
        logged = len(relay_log(str(tmp_path / "spool")))
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
        lines = relay_log(str(tmp_path / "spool"))[logged:]
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
        wait_for(lambda: [text for level, text in relay_log(str(tmp_path / "spool"))
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
    # the relay in this process (the same Relay a relay process runs): its callback is fed;
    # tests/integration/test_cluster_paths.py has a real SASL failure in the relay process
    p = publisher(kafka_bootstrap, topic, tmp_path, KAFKA_SPOOL_PATH=":memory:")
    relay: Any = p.transport._relay  # type: ignore[attr-defined]
    try:
        order(p, "alice", "0")
        assert p.flush(10) == 0
        transport = relay.producer
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
    relay: Any = p.transport._relay  # type: ignore[attr-defined]
    try:
        wait_for(lambda: p.health()["condition"] == "topic missing", 15,
                 message="the condition named")
        transport = relay.producer
        ids = [order(p, "alice", str(i)) for i in range(3)]
        health = wait_for(lambda: (h := p.health())["spool_depth"] == 3 and h, 5,
                          message="the three events counted as waiting")
        assert not health["healthy"]
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
