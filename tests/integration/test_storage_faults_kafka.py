"""Storage faults on the Kafka path, on the app's side and the relay's: an event that was not
stored never looks accepted; the relay's own files full, read-only, deleted or replaced are a
state (health red, logged once, retried), never a resend storm; journal files damaged under a
live app lose nothing (docs/operations.md, "Storage faults")."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask_socketio import SocketIO

from openalgo_events import EventNotStoredError, KafkaEventPublisher, Settings
from openalgo_events.integrations.mirror import mirror_emits
from openalgo_events.integrations.openalgo import attach
from openalgo_events.spool import format as fmt
from tests.doubles.event_bus import EventBus
from tests.doubles.events import synthetic
from tests.integration.relay_support import relay_errors, stop_relays
from tests.support import TopicCollector, create_topic, mounted_tmpfs, wait_for

pytestmark = [pytest.mark.broker]
ROOT = os.geteuid() == 0


def immutable(path: Path | str, on: bool = True) -> None:
    """No file can be created, deleted or written in (or, for a file, into) ``path``: root
    ignores mode bits, not the immutable attribute."""
    if not ROOT:
        pytest.skip("chattr +i needs root")
    subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A directory on its own 16 MiB tmpfs."""
    if not ROOT:
        pytest.skip("mounting a tmpfs needs root")
    with mounted_tmpfs(tmp_path / "disk", "16m") as mount:
        try:
            yield mount
        finally:
            stop_relays(str(mount / "spool"))


def fill(directory: Path) -> None:
    """Take every free block of ``directory``'s volume (a file named filler)."""
    fd = os.open(directory / "filler", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        size = 0
        for step in (1 << 20, 1 << 16, 1 << 12):
            with contextlib.suppress(OSError):
                while True:
                    os.posix_fallocate(fd, size, step)
                    size += step
    finally:
        os.close(fd)


def publisher_for(bootstrap: str, topic: str, spool: Path | str,
                  **extra: str) -> KafkaEventPublisher:
    return KafkaEventPublisher(bootstrap, topic, settings=Settings.from_env(
        {"KAFKA_SPOOL_PATH": str(spool), **extra}))


def counts(collector: TopicCollector) -> Counter[str]:
    return Counter(collector.event_ids())


@pytest.mark.parametrize("fault", ["journal directory read-only", "disk full"])
def test_events_not_stored_raise_and_health_turns_red(kafka_bootstrap, topic, tmpfs, fault,
                                                      caplog):
    """With the app's journal directory made read-only, or its disk filled, mid-run: every event
    the journal cannot store raises EventNotStoredError (logged once, counted, health red);
    every accepted event reaches Kafka once; publishing recovers once the fault is gone."""
    create_topic(kafka_bootstrap, topic)
    collector = TopicCollector(kafka_bootstrap, topic)
    spool = tmpfs / "spool"
    publisher = publisher_for(kafka_bootstrap, topic, spool)
    accepted: list[str] = []
    refused: list[str] = []

    def publish(count: int) -> None:
        for i in range(count):
            try:
                env = publisher.publish_order_event("alice", "SBIN-EQ", "BUY", f"O{i}", "live",
                                                    pad="x" * 1500)
            except EventNotStoredError as exc:
                assert "cannot be created" in str(exc) and exc.event_type == "order_event"
                refused.append(exc.event_id)
            else:
                accepted.append(env.event_id)

    writer = None
    try:
        publish(100)
        writer = next((spool / fmt.WRITERS).iterdir())
        if fault == "disk full":
            fill(tmpfs)
        else:
            immutable(writer)
        with caplog.at_level(logging.INFO, logger="openalgo_events"):
            publish(2000)
            red = publisher.health()
        if fault == "disk full":
            (tmpfs / "filler").unlink()
        else:
            immutable(writer, on=False)
        assert len(refused) > 500, "the journal never needed a new segment"
        assert not red["healthy"] and red["events_not_stored"] == len(refused)
        assert "cannot be created" in red["storage_error"]
        with caplog.at_level(logging.INFO, logger="openalgo_events"):
            publish(300)
        assert caplog.text.count("events cannot be stored") == 1
        assert caplog.text.count("are stored again") == 1
        assert publisher.flush(60) == 0
        wait_for(lambda: set(accepted) <= set(collector.event_ids()), 30,
                 message="every accepted event on the topic")
        assert publisher.health()["healthy"]
        seen = counts(collector)
        assert not set(refused) & set(seen)
        assert max(seen.values()) == 1, "an event was sent twice"
    finally:
        if writer is not None and fault != "disk full":
            with contextlib.suppress(Exception):
                immutable(writer, on=False)
        publisher.close()
        collector.stop()


def test_the_relays_disk_full_with_the_broker_up_sends_each_event_once(kafka_bootstrap, topic,
                                                                       tmpfs):
    """The spool's disk full while the relay runs and the broker answers: the relay keeps
    delivering (its ledger and status are written in place, needing no new block) and every
    accepted event is on the topic exactly once, before and after space is freed."""
    create_topic(kafka_bootstrap, topic)
    collector = TopicCollector(kafka_bootstrap, topic)
    spool = tmpfs / "spool"
    publisher = publisher_for(kafka_bootstrap, topic, spool)
    accepted = []
    try:
        accepted.append(publisher.publish_order_event("alice", "S", "BUY", "0", "live").event_id)
        assert publisher.flush(20) == 0
        fill(tmpfs)
        for i in range(1, 2001):  # fits in the current segment: accepted on a full disk
            with contextlib.suppress(EventNotStoredError):
                accepted.append(publisher.publish_order_event(f"u{i % 5}", "S", "BUY", str(i),
                                                              "live").event_id)
        assert len(accepted) > 1000
        assert publisher.flush(30) == 0
        wait_for(lambda: set(accepted) <= set(collector.event_ids()), 30,
                 message="every accepted event on the topic")
        time.sleep(2)  # a storm would show as more copies arriving
        assert max(counts(collector).values()) == 1
        (tmpfs / "filler").unlink()
        accepted.append(publisher.publish_order_event("alice", "S", "BUY", "x", "live").event_id)
        assert publisher.flush(20) == 0
        wait_for(lambda: accepted[-1] in collector.event_ids(), 20, message="the last one")
        assert max(counts(collector).values()) == 1
    finally:
        publisher.close()
        collector.stop()


def test_the_relays_disk_full_with_the_broker_down_then_space_freed_sends_each_event_once(
        topic, tmpfs):
    """The spool's disk full while the broker is frozen (nothing acknowledged), events accepted
    meanwhile; then the broker back and space freed: every accepted event is on the topic once,
    no storm."""
    from openalgo_events.devbroker import DevBroker

    spool = tmpfs / "spool"
    with DevBroker() as broker:
        create_topic(broker.bootstrap_servers, topic)
        collector = TopicCollector(broker.bootstrap_servers, topic)
        publisher = publisher_for(broker.bootstrap_servers, topic, spool)
        accepted = []
        try:
            accepted.append(publisher.publish_order_event("alice", "S", "BUY", "0", "live")
                            .event_id)
            assert publisher.flush(20) == 0
            os.kill(broker.process.pid, 19)  # SIGSTOP
            fill(tmpfs)
            for i in range(1, 2001):
                with contextlib.suppress(EventNotStoredError):
                    accepted.append(publisher.publish_order_event(f"u{i % 5}", "S", "BUY",
                                                                  str(i), "live").event_id)
            assert len(accepted) > 1000
            time.sleep(3)  # the relay tries meanwhile: nothing may be lost or doubled by it
            os.kill(broker.process.pid, 18)  # SIGCONT
            (tmpfs / "filler").unlink()
            assert publisher.flush(60) == 0
            wait_for(lambda: set(accepted) <= set(collector.event_ids()), 30,
                     message="every accepted event on the topic")
            time.sleep(2)  # a storm would show as more copies arriving
            assert max(counts(collector).values()) == 1
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(broker.process.pid, 18)
            publisher.close()
            collector.stop()
            stop_relays(str(spool))


@pytest.mark.parametrize("victim", [fmt.LEDGER, fmt.STATUS])
def test_a_relay_file_that_cannot_be_written_is_a_state_not_a_resend(kafka_bootstrap, topic,
                                                                      tmp_path, victim):
    """The relay's ledger (or status) made unwritable under it: health turns red naming the file
    and the reason, the relay logs it once and goes on delivering, nothing is sent twice, and
    once the file is writable again health is green and the fault logged as over."""
    create_topic(kafka_bootstrap, topic)
    collector = TopicCollector(kafka_bootstrap, topic)
    spool = tmp_path / "spool"
    publisher = publisher_for(kafka_bootstrap, topic, spool)
    path = spool / victim
    try:
        ids = [publisher.publish_order_event("alice", "S", "BUY", "0", "live").event_id]
        assert publisher.flush(20) == 0
        immutable(path)
        try:
            ids += [publisher.publish_order_event(f"u{i % 3}", "S", "BUY", str(i), "live")
                    .event_id for i in range(1, 301)]
            wait_for(lambda: set(ids) <= set(collector.event_ids()), 30,
                     message="delivery goes on")
            if victim == fmt.LEDGER:
                health = wait_for(lambda: (h := publisher.health())["storage_fault"] and h, 10,
                                  message="the fault in health")
                assert not health["healthy"]
                assert health["storage_fault"]["path"] == str(path)
                assert "not permitted" in health["storage_fault"]["error"]
            wait_for(lambda: relay_errors(str(spool), f"cannot write its {victim}"), 10,
                     message="the fault logged")
        finally:
            immutable(path, on=False)
        wait_for(lambda: publisher.flush(1) == 0, 40, message="acknowledged once writable")
        wait_for(lambda: publisher.health()["healthy"], 40, message="healthy again")
        assert len(relay_errors(str(spool), f"cannot write its {victim}")) == 1
        assert max(counts(collector).values()) == 1
    finally:
        publisher.close()
        collector.stop()


@pytest.mark.parametrize("damage", ["segment deleted", "segment truncated", "journal deleted",
                                    "spool deleted"])
def test_journal_files_damaged_under_a_live_app_lose_nothing(kafka_bootstrap, topic, tmp_path,
                                                             damage):
    """While an app publishes with the broker frozen for it (nothing acknowledged), its current
    segment is deleted or truncated, its journal directory or the whole spool deleted: the app
    never dies, repairs within seconds, and once the broker answers every accepted event is on
    the topic."""
    from openalgo_events.devbroker import DevBroker

    spool = tmp_path / "spool"
    with DevBroker() as broker:
        create_topic(broker.bootstrap_servers, topic)
        collector = TopicCollector(broker.bootstrap_servers, topic)
        publisher = publisher_for(broker.bootstrap_servers, topic, spool)
        try:
            ids = [publisher.publish_order_event("alice", "S", "BUY", "0", "live").event_id]
            assert publisher.flush(20) == 0
            os.kill(broker.process.pid, 19)  # SIGSTOP: nothing more is acknowledged
            ids += [publisher.publish_order_event("alice", "S", "BUY", str(i), "live").event_id
                    for i in range(1, 200)]
            writer = next((spool / fmt.WRITERS).iterdir())
            if damage == "segment deleted":
                (writer / "1.seg").unlink()
            elif damage == "segment truncated":
                os.truncate(writer / "1.seg", 0)
            elif damage == "journal deleted":
                shutil.rmtree(writer)
            else:
                shutil.rmtree(spool)
            ids += [publisher.publish_order_event("alice", "S", "BUY", str(i), "live").event_id
                    for i in range(200, 300)]
            time.sleep(2.5)  # the app's watch looks about once a second
            os.kill(broker.process.pid, 18)  # SIGCONT
            assert publisher.flush(60) == 0
            wait_for(lambda: set(ids) <= set(collector.event_ids()), 60,
                     message="every accepted event on the topic")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(broker.process.pid, 18)
            publisher.close()
            collector.stop()
            stop_relays(str(spool))


def test_integrations_count_events_not_stored_and_log_once(kafka_bootstrap, topic, tmp_path,
                                                          caplog):
    """Through the bus adapter and the emit mirror, events that cannot be stored (the journal
    directory made read-only) never raise into OpenAlgo: they are counted, logged once per
    change of state, health is red, a refused emit still reaches local browsers, and every
    accepted event reaches Kafka."""
    create_topic(kafka_bootstrap, topic)
    spool = tmp_path / "spool"
    publisher = publisher_for(kafka_bootstrap, topic, spool)
    bus = EventBus()
    attachment = attach(bus, publisher, default_user="alice")
    app = Flask(__name__)
    socketio = SocketIO(app, async_mode="threading")
    client = socketio.test_client(app)
    mirror_emits(socketio, publisher, local=False)  # only what is not published is emitted
    collector = TopicCollector(kafka_bootstrap, topic)

    def run(count: int) -> None:
        for i in range(count):
            bus.publish(synthetic("order.placed"))
            socketio.emit("master_contract_download", {"status": "success", "message": f"{i}",
                                                       "pad": "p" * 2000})
        assert bus.drain()

    writer = None
    try:
        with caplog.at_level(logging.INFO, logger="openalgo_events"):
            run(50)
            writer = next((spool / fmt.WRITERS).iterdir())
            immutable(writer)
            try:
                run(600)
                red = publisher.health()
            finally:
                immutable(writer, on=False)
            run(50)
        refused_bus = publisher.stats.count("not_stored", event_type="order_event")
        refused_emits = publisher.stats.count("not_stored",
                                              event_type="master_contract_download")
        assert refused_bus > 100 and refused_emits > 100
        assert attachment.failed == refused_bus
        assert not red["healthy"] and red["events_not_stored"] == refused_bus + refused_emits
        # green once the relay (starting meanwhile) has the events: stored again is not enough
        wait_for(lambda: publisher.health()["healthy"], 30, message="healthy again")
        local = [r for r in client.get_received() if r["name"] == "master_contract_download"]
        assert len(local) == refused_emits
        assert caplog.text.count("events cannot be stored") == 1
        assert caplog.text.count("are stored again") == 1
        assert "could not mirror" not in caplog.text and "could not publish" not in caplog.text
        accepted = 2 * 700 - refused_bus - refused_emits
        assert publisher.flush(30) == 0
        wait_for(lambda: len(set(collector.event_ids())) == accepted, 30,
                 message="every accepted event on the topic")
    finally:
        if writer is not None:
            with contextlib.suppress(Exception):
                immutable(writer, on=False)
        attachment.detach()
        bus._pool.shutdown(wait=True)
        client.disconnect()
        publisher.close()
        collector.stop()


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_close_of_an_in_memory_spool_while_waiting_for_brokers_is_prompt(tmp_path, caplog,
                                                                        guarantee):
    """KAFKA_SPOOL_PATH=:memory: (the relay on a thread of the app) with no broker answering:
    close() stops the relay at once, even while it waits out a rebuild backoff (or for a
    transaction coordinator), without an error, and says how many events were lost with the
    in-memory spool."""
    from openalgo_events.devbroker import free_port

    publisher = KafkaEventPublisher(f"127.0.0.1:{free_port()}", "t", settings=Settings.from_env(
        {"KAFKA_SPOOL_PATH": ":memory:", "KAFKA_STALL_TIMEOUT_SECONDS": "1",
         "KAFKA_DELIVERY_GUARANTEE": guarantee}))
    for i in range(5):
        publisher.publish_order_event("alice", "SBIN-EQ", "BUY", f"O{i}", "live")
    relay = publisher.transport._relay  # type: ignore[attr-defined]
    if guarantee == "at_least_once":
        wait_for(lambda: relay.producer is not None and relay.producer.rebuilds >= 1, 30,
                 message="a producer rebuild")
    else:
        wait_for(lambda: relay.producer is not None and relay.producer.broker_up is False, 30,
                 message="no coordinator answering")
    with caplog.at_level(logging.WARNING):
        started = time.monotonic()
        left = publisher.close(timeout=1.0)
        elapsed = time.monotonic() - started
    assert elapsed < 4.0, f"close took {elapsed:.1f}s"
    assert left == 5
    assert "5 events undelivered: lost (in-memory spool)" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert not os.path.exists(publisher.transport.spool_path)  # type: ignore[attr-defined]



