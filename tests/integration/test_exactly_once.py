"""Exactly once into Kafka: a read_committed consumer sees every event once, whatever fails on
the producing side. The relay killed with -9 (several times), the app killed, both; a zombie
relay (frozen while a new one takes over, then woken) writes nothing visible; a cluster that
refuses transactions gets at-least-once, said in health and by `check`. Real processes, the
suite's Apache Kafka cluster, read_committed consumers; each test prints what it saw. (The
cluster outages, with the same zero-duplicate bound: test_no_loss.py.)"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from openalgo_events import KafkaEventPublisher, Settings
from openalgo_events.cli import main
from openalgo_events.spool import format as fmt
from tests.integration.relay_support import (
    keeper_pid,
    relay_errors,
    relay_pid,
    stop_relays,
)
from tests.support import TopicCollector, create_topic, wait_for

pytestmark = [pytest.mark.broker]


def publisher_for(bootstrap: str, topic: str, spool: str, **env: str) -> KafkaEventPublisher:
    return KafkaEventPublisher(bootstrap, topic, settings=Settings.from_env(
        {"KAFKA_SPOOL_PATH": spool, "KAFKA_STALL_TIMEOUT_SECONDS": "5", **env}))


def verdict(name: str, published: list[str], collector: TopicCollector) -> tuple[int, int]:
    """(missing, duplicates) of ``published`` on the topic, printed for the record."""
    seen = Counter(collector.event_ids())
    missing = sum(1 for event_id in published if not seen[event_id])
    duplicates = sum(count - 1 for count in seen.values() if count > 1)
    print(f"\n{name}: published {len(published)}, missing {missing}, duplicates {duplicates}")
    return missing, duplicates


@pytest.fixture
def spool(tmp_path: Path):
    path = str(tmp_path / "spool")
    yield path
    stop_relays(path)


def test_the_relay_killed_9_three_times_mid_stream_sends_nothing_twice(kafka_bootstrap, topic,
                                                                       spool):
    """3,000 events at about 300/s over 10 users while the relay is SIGKILLed three times (its
    keeper starts it again each time): a read_committed consumer sees every event exactly
    once."""
    create_topic(kafka_bootstrap, topic, partitions=5)
    collector = TopicCollector(kafka_bootstrap, topic)
    publisher = publisher_for(kafka_bootstrap, topic, spool)
    ids: list[str] = []
    kills = 0
    try:
        for i in range(3000):
            ids.append(publisher.publish_order_event(f"u{i % 10}", "S", "BUY", str(i),
                                                     "live").event_id)
            if i in (400, 1200, 2000):
                pid = wait_for(lambda: relay_pid(spool), 20, message="a relay")
                os.kill(pid, signal.SIGKILL)
                kills += 1
            time.sleep(0.003)
        assert publisher.flush(60) == 0
        wait_for(lambda: set(ids) <= set(collector.event_ids()), 60, message="every event")
        time.sleep(1)  # a late copy would show now
        assert kills == 3 and len(relay_errors(spool, "killed by SIGKILL")) == 3
        assert verdict("relay killed 3 times", ids, collector) == (0, 0)
        assert publisher.health()["guarantee"] == "exactly-once"
    finally:
        publisher.close()
        collector.stop()


APP = textwrap.dedent("""
    import sys, time
    from openalgo_events import KafkaEventPublisher, Settings
    bootstrap, topic, spool, log = sys.argv[1:5]
    publisher = KafkaEventPublisher(bootstrap, topic, settings=Settings.from_env(
        {"KAFKA_SPOOL_PATH": spool}))
    with open(log, "a", buffering=1) as out:
        i = 0
        while True:
            i += 1
            env = publisher.publish_order_event(f"u{i % 10}", "S", "BUY", str(i), "live")
            out.write(env.event_id + "\\n")  # after publish returned: accepted
            time.sleep(0.003)
""")


@pytest.mark.parametrize("victims", ["app", "app and relay"])
def test_the_app_killed_9_mid_stream_and_the_relay_with_it_sends_nothing_twice(
        kafka_bootstrap, topic, spool, tmp_path, victims):
    """An app publishing about 300 events/s is SIGKILLed (with its relay too, in the second
    case) and started again: every event it accepted before and after is seen exactly once by
    a read_committed consumer."""
    create_topic(kafka_bootstrap, topic, partitions=5)
    collector = TopicCollector(kafka_bootstrap, topic)
    log = tmp_path / "accepted.txt"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}

    def run_app() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", APP, kafka_bootstrap, topic, spool,
                                 str(log)], env=env, stderr=subprocess.DEVNULL)

    def accepted() -> list[str]:
        return log.read_text().split() if log.exists() else []

    apps = [run_app()]
    try:
        wait_for(lambda: len(accepted()) > 1000, 60, message="1000 events accepted")
        if victims != "app":
            os.kill(wait_for(lambda: relay_pid(spool), 20, message="a relay"), signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, TypeError):
                os.kill(keeper_pid(spool) or 0, signal.SIGKILL)
        apps[0].kill()
        apps[0].wait()
        before = len(accepted())
        apps.append(run_app())
        wait_for(lambda: len(accepted()) > before + 1000, 60, message="1000 more accepted")
        apps[1].terminate()
        apps[1].wait()
        ids = accepted()
        wait_for(lambda: set(ids) <= set(collector.event_ids()), 60, message="every event")
        time.sleep(1)
        assert verdict(f"{victims} killed", ids, collector) == (0, 0)
    finally:
        for app in apps:
            if app.poll() is None:
                app.kill()
                app.wait()
        collector.stop()


def test_a_zombie_relay_writes_nothing_visible(kafka_bootstrap, topic, spool):
    """A relay frozen (SIGSTOP) mid-stream while its lock file is deleted and a new relay takes
    the spool over (fencing the frozen one's transactions), then woken: it stops without a
    record of its own reaching read_committed consumers, and every event is seen exactly once."""
    create_topic(kafka_bootstrap, topic, partitions=5)
    collector = TopicCollector(kafka_bootstrap, topic)
    publisher = publisher_for(kafka_bootstrap, topic, spool,
                              OPENALGO_EVENTS_RELAY_AUTOSTART="FALSE")
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "KAFKA_ORDER_EVENTS_TOPIC": topic, "KAFKA_SPOOL_PATH": spool,
           "OPENALGO_EVENTS_RELAY_AUTOSTART": "FALSE"}
    zombie = subprocess.Popen([sys.executable, "-m", "openalgo_events.relay"], env=env,
                              stderr=subprocess.PIPE, text=True)
    successor = None
    ids: list[str] = []
    try:
        wait_for(lambda: relay_pid(spool) == zombie.pid, 20, message="the first relay")
        for i in range(500):
            ids.append(publisher.publish_order_event(f"u{i % 10}", "S", "BUY", str(i),
                                                     "live").event_id)
        os.kill(zombie.pid, signal.SIGSTOP)  # mid-stream: a transaction may be open
        for i in range(500, 1000):
            ids.append(publisher.publish_order_event(f"u{i % 10}", "S", "BUY", str(i),
                                                     "live").event_id)
        os.remove(os.path.join(spool, fmt.RELAY_LOCK))  # a cleaner: the successor can lock
        successor = subprocess.Popen([sys.executable, "-m", "openalgo_events.relay"], env=env,
                                     stderr=subprocess.DEVNULL)
        assert publisher.flush(60) == 0
        wait_for(lambda: set(ids) <= set(collector.event_ids()), 60, message="every event")
        os.kill(zombie.pid, signal.SIGCONT)
        _, err = zombie.communicate(timeout=60)  # it stops: fenced, or its lock taken
        assert "another process holds it now; stopping" in err or "took over" in err, err
        time.sleep(1)
        assert verdict("zombie relay woken", ids, collector) == (0, 0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(zombie.pid, signal.SIGCONT)
        for relay in (zombie, successor):
            if relay is not None and relay.poll() is None:
                relay.terminate()
                relay.wait(30)
        publisher.close()
        collector.stop()


def test_a_cluster_refusing_transactions_gets_at_least_once_said_everywhere(
        kafka_bootstrap, topic, spool, cli_env):
    """A transaction timeout the brokers refuse (over their transaction.max.timeout.ms): the
    relay falls back to at-least-once, says so once at ERROR with the reason, health and
    `check` say which guarantee is in force, and the events are delivered."""
    create_topic(kafka_bootstrap, topic)
    too_long = {"KAFKA_LIBRDKAFKA_TRANSACTION_TIMEOUT_MS": "1000000"}
    collector = TopicCollector(kafka_bootstrap, topic)
    publisher = publisher_for(kafka_bootstrap, topic, spool, **too_long)
    try:
        ids = [publisher.publish_order_event("alice", "S", "BUY", str(i), "live").event_id
               for i in range(20)]
        assert publisher.flush(60) == 0
        wait_for(lambda: set(ids) <= set(collector.event_ids()), 30, message="the events")
        health = wait_for(lambda: (h := publisher.health())["guarantee"] and h, 10,
                          message="the guarantee in health")
        assert health["guarantee"] == "at-least-once"
        errors = relay_errors(spool, "exactly-once is not available")
        assert len(errors) == 1 and "INVALID_TRANSACTION_TIMEOUT" in errors[0], errors
        cli_env(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, KAFKA_ORDER_EVENTS_TOPIC=topic,
                ORDER_EVENT_MODE="KAFKA", KAFKA_SPOOL_PATH=spool, **too_long)
        checked = CliRunner().invoke(main, ["check"])
        assert checked.exit_code == 0, checked.output
        assert "Delivery: at-least-once: the cluster refuses transactions" in checked.output
        cli_env(KAFKA_LIBRDKAFKA_TRANSACTION_TIMEOUT_MS="60000")
        checked = CliRunner().invoke(main, ["check"])
        assert "Delivery: exactly-once (transactions available" in checked.output, checked.output
    finally:
        publisher.close()
        collector.stop()
