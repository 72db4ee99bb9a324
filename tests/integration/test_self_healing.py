"""A relay always runs while events wait: killed relays and keepers are replaced without the app
publishing again, a forked child starts its own, and a relay that cannot use its spool stops
with the fix and is not restarted in a tight loop. Real processes, a real broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from openalgo_events import KafkaEventPublisher, Settings
from openalgo_events.spool import Spool
from openalgo_events.spool import format as fmt
from tests.integration.relay_support import (
    keeper_pid,
    relay_errors,
    relay_log,
    relay_pid,
    stop_relays,
)
from tests.support import TopicCollector, create_topic, wait_for

pytestmark = [pytest.mark.broker]


@pytest.fixture
def spool(tmp_path: Path):
    path = str(tmp_path / "spool")
    yield path
    stop_relays(path)


def publisher_for(bootstrap: str, topic: str, spool: str) -> KafkaEventPublisher:
    return KafkaEventPublisher(bootstrap, topic, settings=Settings.from_env(
        {"KAFKA_SPOOL_PATH": spool}))


@pytest.mark.parametrize("victims", ["relay", "relay and keeper"])
def test_a_relay_killed_under_an_idle_app_is_replaced(kafka_bootstrap, topic, spool, victims):
    """An app publishes, its relay is SIGKILLed (the OOM killer picks the biggest process; with
    its keeper too, in the second case), the app publishes 5 more and then idles: all 6 events
    are on the topic within 10 s, with no further publish and no flush."""
    create_topic(kafka_bootstrap, topic)
    collector = TopicCollector(kafka_bootstrap, topic)
    publisher = publisher_for(kafka_bootstrap, topic, spool)
    try:
        ids = [publisher.publish_order_event("alice", "SBIN", "BUY", "0", "live").event_id]
        wait_for(lambda: ids[0] in collector.event_ids(), 20, message="the first event")
        relay, keeper = relay_pid(spool), keeper_pid(spool)
        assert relay and keeper
        if victims != "relay":
            os.kill(keeper, signal.SIGKILL)
        os.kill(relay, signal.SIGKILL)
        wait_for(lambda: relay_pid(spool) != relay, 5, message="the relay's lock released")
        ids += [publisher.publish_order_event("alice", "SBIN", "BUY", str(i), "live").event_id
                for i in range(1, 6)]
        idle_from = time.monotonic()
        wait_for(lambda: set(ids) <= set(collector.event_ids()), 10,
                 message="all 6 events on the topic without another publish")
        assert time.monotonic() - idle_from < 10
        assert relay_pid(spool) not in (None, relay)
    finally:
        publisher.close()
        collector.stop()


def test_a_relay_that_delivered_everything_is_replaced_at_once_when_killed(kafka_bootstrap,
                                                                        topic, spool):
    """The app's watch thread ends once every event of the app is acknowledged, possibly
    without having seen the relay it started (a relay that delivered in under a second). Its
    keeper and relay SIGKILLed then, the next publish starts a new keeper within 3 s, not
    after the first keeper's 10 s start grace."""
    import threading

    create_topic(kafka_bootstrap, topic)
    collector = TopicCollector(kafka_bootstrap, topic)
    publisher = publisher_for(kafka_bootstrap, topic, spool)
    try:
        ids = [publisher.publish_order_event("alice", "SBIN", "BUY", "0", "live").event_id]
        assert publisher.flush(20) == 0
        wait_for(lambda: not any(t.name == "openalgo-events-relay-watch"
                                 for t in threading.enumerate()), 10,
                 message="the watch thread ends once nothing waits")
        relay, keeper = relay_pid(spool), keeper_pid(spool)
        assert relay and keeper
        os.kill(keeper, signal.SIGKILL)
        os.kill(relay, signal.SIGKILL)
        wait_for(lambda: relay_pid(spool) is None and keeper_pid(spool) is None, 5,
                 message="the locks released")
        ids.append(publisher.publish_order_event("alice", "SBIN", "BUY", "1", "live").event_id)
        wait_for(lambda: keeper_pid(spool) not in (None, keeper), 3,
                 message="a new keeper started by the next publish")
        wait_for(lambda: set(ids) <= set(collector.event_ids()), 30, message="both events")
    finally:
        publisher.close()
        collector.stop()


CHILD = textwrap.dedent("""
    import os, sys, time
    from openalgo_events import KafkaEventPublisher, Settings
    bootstrap, topic, spool = sys.argv[1:4]
    publisher = KafkaEventPublisher(bootstrap, topic, settings=Settings.from_env(
        {"KAFKA_SPOOL_PATH": spool}))
    print(publisher.publish_order_event("parent", "SBIN", "BUY", "p", "live").event_id,
          flush=True)
    publisher.flush(20)
    if os.fork() == 0:
        time.sleep(3)  # the parent is gone, and so is the relay it started (idle)
        print(publisher.publish_order_event("child", "SBIN", "BUY", "c", "live").event_id,
              flush=True)
        os._exit(0)  # no close()
    publisher.close()
""")


def test_a_child_forked_before_its_parent_exits_starts_its_own_relay(kafka_bootstrap, topic,
                                                                     spool):
    """A parent publishes, forks, closes and exits; the relay it started goes idle and exits;
    the child publishes 3 s later and exits without close(): its event is delivered (the child
    does not inherit its parent's "a relay was started")."""
    create_topic(kafka_bootstrap, topic)
    collector = TopicCollector(kafka_bootstrap, topic)
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, kafka_bootstrap, topic, spool],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PYTHONPATH": os.getcwd()})
        assert out.returncode == 0, out.stderr
        parent_id, child_id = out.stdout.split()  # the child's stdout closes as it exits
        wait_for(lambda: {parent_id, child_id} <= set(collector.event_ids()), 20,
                 message="the child's event on the topic")
    finally:
        collector.stop()


def test_a_relay_that_cannot_use_its_spool_stops_with_the_fix_and_is_not_restarted_in_a_loop(
        kafka_bootstrap, topic, spool):
    """The relay's ledger replaced by a directory: the relay exits 78 naming the file and the
    fix; its keeper waits 5 s, then longer, before the next try (no tight loop); once the cause
    is removed, the next start delivers what waited."""
    create_topic(kafka_bootstrap, topic)
    collector = TopicCollector(kafka_bootstrap, topic)
    os.makedirs(os.path.join(spool, fmt.LEDGER), mode=0o700)  # not a regular file
    os.chmod(spool, 0o700)
    publisher = publisher_for(kafka_bootstrap, topic, spool)
    try:
        ids = [publisher.publish_order_event("alice", "SBIN", "BUY", str(i), "live").event_id
               for i in range(3)]
        wait_for(lambda: len(relay_errors(spool, "cannot use spool")) >= 2, 30,
                 message="two failed starts")
        failures = relay_errors(spool, "cannot use spool")
        assert f"{spool}/{fmt.LEDGER} is not a regular file; remove it" in failures[0]
        assert relay_errors(spool, "exited with status 78", "starting it again in 5.0 s")
        time.sleep(3)
        assert len(relay_errors(spool, "cannot use spool")) <= 3  # not a tight loop
        os.rmdir(os.path.join(spool, fmt.LEDGER))
        wait_for(lambda: set(ids) <= set(collector.event_ids()), 30,
                 message="the events delivered once the spool is usable")
        assert publisher.flush(10) == 0
        starts = [t for level, t in relay_log(spool) if "relay for spool" in t and "running" in t]
        assert len(starts) == 1
    finally:
        publisher.close()
        collector.stop()


def test_health_never_names_a_dead_relay(kafka_bootstrap, topic, spool, monkeypatch):
    """Right after its relay is SIGKILLed, with events waiting, health does not say running,
    names no pid and counts what waits (it reads the lock and the journals, not a stale
    status)."""
    monkeypatch.setenv("OPENALGO_EVENTS_RELAY_AUTOSTART", "FALSE")
    create_topic(kafka_bootstrap, topic)
    publisher = publisher_for(kafka_bootstrap, topic, spool)
    relay = subprocess.Popen([sys.executable, "-m", "openalgo_events.relay", "--spool", spool],
                             env={**os.environ, "PYTHONPATH": os.getcwd(),
                                  "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                                  "KAFKA_ORDER_EVENTS_TOPIC": topic},
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: relay_pid(spool) == relay.pid, 20, message="the relay")
        publisher.publish_order_event("alice", "SBIN", "BUY", "0", "live")
        assert publisher.flush(20) == 0
        wait_for(lambda: publisher.health()["healthy"], 10, message="healthy")
        os.kill(relay.pid, signal.SIGSTOP)  # it cannot deliver what comes next
        for i in range(18):
            publisher.publish_order_event("alice", "SBIN", "BUY", str(i), "live")
        relay.kill()
        relay.wait()
        health = publisher.health()
        assert health["relay_running"] is False and health["relay_pid"] is None
        assert health["healthy"] is False and health["spool_depth"] == 18
        assert health["problem"] == "no relay is running"
        with Spool(spool) as opened:
            assert opened.pending().depth == 18
    finally:
        publisher.close()
        if relay.poll() is None:
            relay.kill()
