"""No event lost: broker outages, a replaced broker, process crashes, a broker absent at start.

These tests stop and start brokers, so they always run their own Tansu broker (memory storage)
rather than a shared cluster. Tansu keeps nothing when killed: an event it acknowledged and
then lost with its memory is the broker's loss, not the publisher's. Each test therefore
separates "acknowledged by a broker we killed" from "never acknowledged": the publisher's
guarantee is that the second kind always arrives.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from openalgo_events import KafkaEventPublisher, Settings
from openalgo_events.devbroker import DevBroker, free_port
from tests.integration.relay_support import relay_processes
from tests.support import TopicCollector, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def settings(tmp_path, **env: str) -> Settings:
    return Settings.from_env({"KAFKA_SPOOL_PATH": str(tmp_path / "spool.db"),
                              "KAFKA_STALL_TIMEOUT_SECONDS": "5", **env})


def delivered_before(spool_path: str, moment: float) -> set[str]:
    """Event ids the spool recorded as acknowledged before ``moment`` (unix time)."""
    with sqlite3.connect(f"file:{spool_path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT event_id FROM events WHERE delivered <= ?", (moment,))
        return {event_id for (event_id,) in rows}


def first_appearances(collectors: list[TopicCollector]) -> dict[str, list[str]]:
    """Per user, event ids in the order they first arrived (brokers in the order they ran)."""
    seen: set[str] = set()
    order: dict[str, list[str]] = defaultdict(list)
    for collector in collectors:
        for _partition, _offset, key, value, _ in sorted(collector.messages):
            event_id = json.loads(value)["event_id"]
            if event_id not in seen:
                seen.add(event_id)
                order[key.decode()].append(event_id)
    return order


def test_broker_outage_and_replacement_lose_nothing(tmp_path, topic):
    """100 events/s for 60 s over 10 users; the broker dies for 32 s and a fresh one (no producer
    state) takes its address: every event not acknowledged by the dead broker arrives, and each
    user's events first arrive in publish order."""
    port = free_port()
    broker = DevBroker(port).start()
    spool_path = str(tmp_path / "spool.db")
    publisher = KafkaEventPublisher(broker.bootstrap_servers, topic, settings=settings(tmp_path))
    collectors = [TopicCollector(broker.bootstrap_servers, topic)]
    published: dict[str, list[str]] = defaultdict(list)
    start = time.monotonic()
    killed_at = restarted = None
    try:
        for i in range(6000):
            due = start + i / 100
            time.sleep(max(0.0, due - time.monotonic()))
            user = f"user{i % 10}"
            published[user].append(publisher.publish_order_event(user, "SBIN", "BUY", str(i),
                                                                 "live").event_id)
            elapsed = time.monotonic() - start
            if killed_at is None and elapsed >= 15:
                # Let the reader catch up with what is acknowledged, then kill the broker.
                wait_for(lambda: delivered_before(spool_path, time.time() - 0.2)
                         <= set(collectors[0].event_ids()), 10, message="reader to catch up")
                broker.stop()
                killed_at = time.time()
                collectors[0].stop()  # it would otherwise read the next broker at this address
            if killed_at and not restarted and elapsed >= 47:
                broker = DevBroker(port).start()
                restarted = time.time()
                collectors.append(TopicCollector(broker.bootstrap_servers, topic))
        all_ids = {e for ids in published.values() for e in ids}
        wait_for(lambda: publisher.flush(0) == 0, 90, message="spool to drain")
        lost_with_broker = delivered_before(spool_path, killed_at) - set(collectors[0].event_ids())
        wait_for(lambda: all_ids - lost_with_broker <= set(collectors[1].event_ids())
                 | set(collectors[0].event_ids()), 60, message="every event at the consumer")
    finally:
        for collector in collectors:
            collector.stop()
        rebuilds = publisher.transport.health()["transports"]["kafka"]["producer_rebuilds"] \
            if hasattr(publisher.transport, "kafka") else publisher.health()["producer_rebuilds"]
        publisher.close(5)
        broker.stop()
    received = [e for c in collectors for e in c.event_ids()]
    missing = all_ids - set(received)
    assert missing == lost_with_broker  # nothing the publisher was responsible for is missing
    assert len(lost_with_broker) <= 5, "the reader should have drained the broker before the kill"
    order = first_appearances(collectors)
    for user, ids in published.items():
        expected = [e for e in ids if e not in lost_with_broker]
        assert order[user] == expected
    duplicates = len(received) - len(set(received))
    print(f"\noutage: {len(all_ids)} published, {len(set(received))} distinct received, "
          f"{duplicates} duplicates, {len(lost_with_broker)} lost with the killed broker, "
          f"{rebuilds} producer rebuilds")
    assert rebuilds >= 1  # the replaced broker forced at least one producer rebuild


PUBLISHER = textwrap.dedent("""
    import sys
    from openalgo_events import KafkaEventPublisher, Settings
    bootstrap, topic, spool, log_path, count = sys.argv[1:6]
    settings = Settings.from_env({"KAFKA_SPOOL_PATH": spool, "KAFKA_STALL_TIMEOUT_SECONDS": "5"})
    publisher = KafkaEventPublisher(bootstrap, topic, settings=settings)
    with open(log_path, "a", buffering=1) as log:
        for i in range(int(count)):
            env = publisher.publish_order_event(f"user{i % 10}", "SBIN", "BUY", str(i), "live")
            log.write(env.event_id + "\\n")  # written only after publish() returned
    print("published", flush=True)
    sys.stdin.read()  # wait to be killed
    left = publisher.flush(30)  # close() never waits: flush does
    publisher.close()
    print("left", left, flush=True)
""")


def run_publisher(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", PUBLISHER, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})


def test_kill_9_with_events_pending_loses_nothing(tmp_path, topic):
    """A publisher killed with -9 while its events are pending (broker frozen) sends them all
    after it is started again."""
    with DevBroker() as broker:
        collector = TopicCollector(broker.bootstrap_servers, topic)
        spool, log_path = str(tmp_path / "spool.db"), str(tmp_path / "ids.txt")
        args = [broker.bootstrap_servers, topic, spool, log_path]
        try:
            os.kill(broker.process.pid, signal.SIGSTOP)  # events stay pending
            first = run_publisher([*args, "2000"])
            assert first.stdout.readline().strip() == "published"
            # kill -9 of the publisher and of the relay it started, whatever it read by then:
            # what it did not commit is still in the dead publisher's journal
            relays = wait_for(lambda: relay_processes(spool), 10, message="the relay")
            first.kill()
            first.communicate(timeout=10)
            for pid in relays:
                os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not relay_processes(spool), 10, message="the relay gone")
            os.kill(broker.process.pid, signal.SIGCONT)
            second = run_publisher([*args, "100"])
            assert second.stdout.readline().strip() == "published"
            out, _ = second.communicate("", timeout=60)
            assert out.split() == ["left", "0"]
            with open(log_path) as f:
                published = [line.strip() for line in f if line.strip()]
            wait_for(lambda: set(published) <= set(collector.event_ids()), 60,
                     message="every event id published before the crash")
        finally:
            collector.stop()
    assert len(published) == 2100


@contextmanager
def broker_appears(port: int, topic: str, ids: set[str]) -> Iterator[DevBroker]:
    """Start a broker on ``port``; enter once every event in ``ids`` is on ``topic``."""
    with DevBroker(port) as broker:
        collector = TopicCollector(broker.bootstrap_servers, topic)
        try:
            wait_for(lambda: ids <= set(collector.event_ids()), 60, message="delivery")
        finally:
            collector.stop()
        yield broker


def test_broker_absent_at_start_up(tmp_path, topic):
    """With no broker at start-up the publisher starts, accepts events, reports itself unhealthy,
    and delivers everything once a broker appears."""
    port = free_port()
    publisher = KafkaEventPublisher(f"127.0.0.1:{port}", topic, settings=settings(tmp_path))
    try:
        ids = {publisher.publish_order_event("alice", "SBIN", "BUY", str(i), "live").event_id
               for i in range(50)}
        health = wait_for(lambda: (h := publisher.health()) and h["broker_reachable"] is False
                          and h, 15, message="health to report the broker unreachable")
        assert health["healthy"] is False and health["spool_depth"] == 50
        with broker_appears(port, topic, ids):
            wait_for(lambda: publisher.health()["healthy"], 15, message="healthy again")
    finally:
        publisher.close(1)


def test_spool_full_sheds_low_priority_and_delivers_every_critical_event(tmp_path, topic):
    """With the broker down and the spool over its limit, master-contract events are shed (counted)
    while every order event is kept and delivered when the broker returns."""
    port = free_port()
    publisher = KafkaEventPublisher(f"127.0.0.1:{port}", topic,
                                    settings=settings(tmp_path, KAFKA_SPOOL_MAX_BYTES="20000"))
    try:
        orders = {publisher.publish_order_event("alice", "SBIN", "BUY", str(i), "live").event_id
                  for i in range(200)}
        for _ in range(20):
            publisher.publish_master_contract_download("angel", "success", "done")
        # shed by the relay process, which applies the overflow policy as it reads the journals
        wait_for(lambda: publisher.health()["spool_shed"] == 20, 10, message="20 events shed")
        with broker_appears(port, topic, orders):
            pass
    finally:
        publisher.close(1)


def test_a_failed_delivery_is_logged_with_its_event_id_and_resent(tmp_path, topic, caplog):
    """A delivery report with an error (here librdkafka's message timeout, the broker being absent)
    logs the event's id and spool number; the event stays in the spool and arrives later."""
    port = free_port()
    publisher = KafkaEventPublisher(f"127.0.0.1:{port}", topic, settings=settings(
        tmp_path, KAFKA_LIBRDKAFKA_MESSAGE_TIMEOUT_MS="1000"))
    try:
        event_id = publisher.publish_order_event("alice", "SBIN", "BUY", "1", "live").event_id
        relay_log = tmp_path / "spool.db.relay.log"  # the relay process's, started detached
        wait_for(lambda: relay_log.exists() and f"delivery of event {event_id} (spool #1) "
                 "failed" in relay_log.read_text(), 15, message="the failure to be logged")
        assert publisher.health()["spool_depth"] == 1
        with broker_appears(port, topic, {event_id}):
            pass
    finally:
        publisher.close(1)
