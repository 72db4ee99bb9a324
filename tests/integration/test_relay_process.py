"""The relay runs in its own process and reads the journals directly: real processes, a real
broker. A script that exits without close(), a fork, a relay killed with -9, a spool of another
cluster or topic, its lock file deleted or taken, bad frames among good ones, the relay in the
foreground, SIGTERM against a frozen broker, segments followed across, a trail bounded by
relays that live seconds, and a large backlog drained in bounded memory."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import traceback
import urllib.request
from pathlib import Path

import pytest

from openalgo_events import Envelope, KafkaEventPublisher, Settings
from openalgo_events.errors import ConfigError
from openalgo_events.spool import Spool, identity
from openalgo_events.spool import format as fmt
from openalgo_events.spool.directory import SpoolDirectory, posix_lock
from tests.integration.relay_support import (
    relay_errors,
    relay_pid,
    relay_processes,
    stop_relays,
    wait_relay_gone,
)
from tests.support import TopicCollector, create_topic, wait_for

pytestmark = [pytest.mark.broker]

SCRIPT = textwrap.dedent("""
    import os, sys
    from openalgo_events import KafkaEventPublisher, Settings
    bootstrap, topic, spool, count = sys.argv[1:5]
    pad = "x" * int(sys.argv[5]) if len(sys.argv) > 5 else ""
    settings = Settings.from_env({**os.environ, "KAFKA_SPOOL_PATH": spool})
    publisher = KafkaEventPublisher(bootstrap, topic, settings=settings)
    for i in range(int(count)):
        env = publisher.publish_order_event(f"user{i % 10}", "SBIN", "BUY", str(i), "live",
                                            pad=pad)
        print(env.event_id, flush=True)
    # no close(), no flush(): the README's snippet, as short scripts are written
""")


def run_script(*args: str, env: dict[str, str] | None = None) -> list[str]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd(),
                                            **(env or {})})
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def relay_env(bootstrap: str, topic: str, spool: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.getcwd(), "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_ORDER_EVENTS_TOPIC": topic, "KAFKA_SPOOL_PATH": spool, **extra}


@pytest.fixture
def spool(tmp_path: Path):
    path = str(tmp_path / "spool")
    yield path
    stop_relays(path)


def test_script_exiting_without_close_delivers_everything(kafka_bootstrap, topic, spool):
    """A script publishing 100 events and exiting without close(): all 100 reach the topic
    within 10 s of its exit, sent by the relay it started, which then exits by itself and
    leaves the dead writer's journal in the trail."""
    create_topic(kafka_bootstrap, topic)
    collector = TopicCollector(kafka_bootstrap, topic)
    try:
        ids = run_script(kafka_bootstrap, topic, spool, "100")
        exited = time.monotonic()
        assert len(ids) == 100
        wait_for(lambda: set(ids) <= set(collector.event_ids()), 10,
                 message="100 events on the topic")
        assert time.monotonic() - exited < 10
        wait_relay_gone(spool, 20)
        assert os.listdir(os.path.join(spool, fmt.WRITERS)) == []
        assert len(os.listdir(os.path.join(spool, fmt.TRAIL))) == 1
        assert collector.event_ids().count(ids[0]) == 1
    finally:
        collector.stop()


def test_fork_after_build_child_events_arrive(kafka_bootstrap, topic, spool):
    """A publisher built, then os.fork(): the child's events arrive, from its own journal."""
    create_topic(kafka_bootstrap, topic)
    collector = TopicCollector(kafka_bootstrap, topic)
    settings = Settings.from_env({"KAFKA_SPOOL_PATH": spool})
    publisher = KafkaEventPublisher(kafka_bootstrap, topic, settings=settings)
    try:
        parent_id = publisher.publish_order_event("alice", "SBIN", "BUY", "p1", "live").event_id
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: publish, report (or say what failed), exit without cleanup
            try:
                ids = [publisher.publish_order_event("bob", "SBIN", "BUY", f"c{i}", "live")
                       .event_id for i in range(5)]
                name = publisher.transport._journal.name  # type: ignore[attr-defined]
                os.write(write, json.dumps([ids, name]).encode())
            except BaseException:
                os.write(write, json.dumps(traceback.format_exc()).encode())
            finally:
                os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        with os.fdopen(read) as pipe:
            report = json.loads(pipe.read())
        assert isinstance(report, list), f"the child's publish failed: {report}"
        child_ids, child_writer = report
        assert child_writer != publisher.transport._journal.name  # type: ignore[attr-defined]
        wait_for(lambda: {parent_id, *child_ids} <= set(collector.event_ids()), 20,
                 message="parent and child events on the topic")
        assert publisher.flush(10) == 0  # the parent's own event is confirmed to the parent
    finally:
        publisher.close()
        collector.stop()


def test_relay_killed_9_mid_stream_loses_nothing(kafka_bootstrap, topic, spool):
    """kill -9 of the relay while an app publishes: its keeper starts it again, and every event
    arrives."""
    create_topic(kafka_bootstrap, topic)
    collector = TopicCollector(kafka_bootstrap, topic)
    settings = Settings.from_env({"KAFKA_SPOOL_PATH": spool})
    publisher = KafkaEventPublisher(kafka_bootstrap, topic, settings=settings)
    ids: list[str] = []
    try:
        for i in range(600):
            ids.append(publisher.publish_order_event(f"u{i % 7}", "SBIN", "BUY", str(i),
                                                     "live").event_id)
            if i == 200:
                pid = wait_for(lambda: relay_pid(spool), 10, message="a relay")
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.005)
        wait_for(lambda: set(ids) <= set(collector.event_ids()), 30,
                 message="every event on the topic")
        assert publisher.flush(10) == 0
        assert relay_errors(spool, "killed by SIGKILL", "starting it again")
    finally:
        publisher.close()
        collector.stop()


def test_other_cluster_or_topic_is_refused(kafka_bootstrap, topic, spool):
    """A publisher for another topic on a spool that sends elsewhere is refused at
    construction, with the way out."""
    settings = Settings.from_env({"KAFKA_SPOOL_PATH": spool})
    KafkaEventPublisher(kafka_bootstrap, topic, settings=settings).close()
    with pytest.raises(ConfigError, match=r"belongs to .* own KAFKA_SPOOL_PATH"):
        KafkaEventPublisher(kafka_bootstrap, topic + "-other", settings=settings)


def test_lock_file_deleted_under_the_relay_is_taken_again(kafka_bootstrap, topic, spool):
    """Deleting the relay's lock file under it (a tmp cleaner) does not stop it: the relay
    takes a new one within a second, so apps still find it running and start no second relay,
    and it goes on delivering."""
    create_topic(kafka_bootstrap, topic)
    collector = TopicCollector(kafka_bootstrap, topic)
    publisher = KafkaEventPublisher(kafka_bootstrap, topic, settings=Settings.from_env(
        {"KAFKA_SPOOL_PATH": spool}))
    try:
        first = publisher.publish_order_event("alice", "SBIN", "BUY", "1", "live").event_id
        pid = wait_for(lambda: relay_pid(spool), 10, message="a relay")
        os.remove(os.path.join(spool, fmt.RELAY_LOCK))
        wait_for(lambda: relay_pid(spool) == pid, 5, message="the lock taken again")
        wait_for(lambda: relay_errors(spool, "it is taken again"), 5,
                 message="the relay to say it took the lock file again")
        assert relay_processes(spool, keepers=False) == [pid]
        second = publisher.publish_order_event("alice", "SBIN", "BUY", "2", "live").event_id
        assert publisher.flush(30) == 0
        wait_for(lambda: {first, second} <= set(collector.event_ids()), 30,
                 message="both events delivered")
        assert relay_processes(spool, keepers=False) == [pid]
    finally:
        publisher.close()
        collector.stop()


def test_lock_file_taken_by_another_process_stops_the_relay(kafka_bootstrap, topic, spool):
    """When another process holds a new lock file at the relay lock's path (a relay started
    while the old file was gone), the running relay stops, so two relays never serve one spool,
    and says why."""
    relay = subprocess.Popen([sys.executable, "-m", "openalgo_events.relay"],
                             env=relay_env(kafka_bootstrap, topic, spool),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: relay_pid(spool) == relay.pid, 20, message="the relay running")
        # A file this test holds replaces the lock in one step: the relay cannot take it again.
        stranger = os.open(os.path.join(spool, "other.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        assert posix_lock(stranger)
        os.replace(os.path.join(spool, "other.lock"), os.path.join(spool, fmt.RELAY_LOCK))
        try:
            assert relay.wait(20) == 0
        finally:
            os.close(stranger)
        _, err = relay.communicate(timeout=10)
        assert "another process holds it now; stopping" in err, err
    finally:
        if relay.poll() is None:
            relay.kill()
        relay.communicate(timeout=10)


def _dead_writer(spool: str, name: str, frames: list[bytes]) -> None:
    """A writer directory whose lock nobody holds, with these frames in its first segment."""
    directory = Path(spool) / fmt.WRITERS / name
    directory.mkdir(parents=True, mode=0o700)
    (directory / fmt.WRITER_LOCK).touch(mode=0o600)
    data = b"".join(frames)
    (directory / "1.seg").write_bytes(data + bytes(4096))
    os.chmod(directory / "1.seg", 0o600)


def test_bad_frames_lose_only_themselves(kafka_bootstrap, topic, spool):
    """A dead writer's journal with a frame whose CRC is wrong and a frame whose CRC is right
    but whose metadata is unreadable, among good ones; and a live writer publishing meanwhile:
    every good record of both is delivered, each bad frame is set aside, counted and logged
    with its position, and the relay then exits."""
    create_topic(kafka_bootstrap, topic)
    collector = TopicCollector(kafka_bootstrap, topic)
    identity.claim(SpoolDirectory(spool), kafka_bootstrap, topic)
    ids, frames = [], []
    for seq in range(1, 6):
        envelope = Envelope("order_event", "alice", {"orderid": str(seq)})
        ids.append(envelope.event_id)
        meta = [seq, envelope.event_id, "order_event", "alice", 3, time.time(),
                envelope.timestamp, "openalgo", None]
        frame = bytearray(fmt.encode(meta, envelope.value))
        if seq == 2:
            frame[12] ^= 0xFF  # a flipped byte: the CRC no longer matches
        if seq == 4:  # a right CRC over metadata that is not a record's
            frame = bytearray(_raw_frame(b'{"seq": 4}', envelope.value))
        frames.append(bytes(frame))
    _dead_writer(spool, "99999-1", frames)
    publisher = KafkaEventPublisher(kafka_bootstrap, topic, settings=Settings.from_env(
        {"KAFKA_SPOOL_PATH": spool}))
    try:
        live = [publisher.publish_order_event("bob", "SBIN", "BUY", str(i), "live").event_id
                for i in range(20)]
        wait_for(lambda: {ids[0], ids[2], ids[4], *live} <= set(collector.event_ids()), 30,
                 message="every good record on the topic")
        assert publisher.flush(10) == 0
        assert not {ids[1], ids[3]} & set(collector.event_ids())
        assert relay_errors(spool, "a corrupt frame in writer 99999-1's journal, segment 1")
        assert relay_errors(spool, "an unreadable frame in writer 99999-1's journal")
        wait_for(lambda: Spool(spool).status().get("journal_corrupt_frames") == 2, 10,
                 message="two bad frames counted in the relay's status")
    finally:
        publisher.close()
        collector.stop()
    wait_relay_gone(spool, 30)
    assert os.path.isdir(os.path.join(spool, fmt.TRAIL, "99999-1"))


def _raw_frame(payload_meta: bytes, value: bytes) -> bytes:
    import zlib

    payload = payload_meta + b"\n" + value
    return fmt.HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def test_cli_relay_in_the_foreground_serves_health_and_stops_on_sigterm(kafka_bootstrap, topic,
                                                                         spool, monkeypatch):
    """`openalgo-events relay` (systemd, sidecar) sends an app's events with autostart off,
    answers /health and /metrics on its loopback port, refuses a second relay on the same spool
    (exit 3, saying which pid holds it), and exits 0 on SIGTERM, having let go of the spool."""
    from openalgo_events.devbroker import free_port

    create_topic(kafka_bootstrap, topic)
    port = free_port()
    env = relay_env(kafka_bootstrap, topic, spool)
    cli = str(Path(sys.executable).parent / "openalgo-events")
    relay = subprocess.Popen([cli, "relay", "--port", str(port)], env=env,
                             stderr=subprocess.PIPE, text=True)
    collector = TopicCollector(kafka_bootstrap, topic)
    monkeypatch.setenv("OPENALGO_EVENTS_RELAY_AUTOSTART", "FALSE")  # the relay is ours
    publisher = KafkaEventPublisher(kafka_bootstrap, topic, settings=Settings.from_env(
        {"KAFKA_SPOOL_PATH": spool}))
    try:
        wait_for(lambda: relay_pid(spool) == relay.pid, 15, message="the relay holds the spool")
        ids = [publisher.publish_order_event("alice", "SBIN", "BUY", str(i), "live").event_id
               for i in range(20)]
        assert publisher.flush(15) == 0
        wait_for(lambda: set(ids) <= set(collector.event_ids()), 15, message="20 on the topic")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
            health = json.loads(answer.read())
        assert health["healthy"] is True and health["pid"] == relay.pid
        assert health["port"] == port and health["guarantee"] == "exactly-once"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            assert b'openalgo_events_delivered_total{event_type="order_event",transport="kafka"}' \
                in answer.read()
        second = subprocess.run([cli, "relay"], env=env, capture_output=True, text=True,
                                timeout=30)
        assert second.returncode == 3
        assert f"another relay (pid {relay.pid}) already holds spool" in second.stderr
        relay.send_signal(signal.SIGTERM)
        _, err = relay.communicate(timeout=15)
        assert relay.returncode == 0, err
        assert relay_pid(spool) is None
        assert "stopped; 0 events pending" in err
        # with no relay, what the app journals is still counted as pending by the operator's
        # read-only status
        for i in range(3):
            publisher.publish_order_event("alice", "SBIN", "BUY", f"late{i}", "live")
        status = subprocess.run([cli, "spool", "status", "--json"], env=env, text=True,
                                capture_output=True, timeout=30)
        found = json.loads(status.stdout)
        assert found["depth"] == 3 and found["path"] == spool, status.stderr
        assert found["relay_pid"] is None
    finally:
        publisher.close()
        collector.stop()
        if relay.poll() is None:
            relay.kill()
            relay.wait()


def test_sigterm_with_the_broker_frozen_stops_at_once_and_keeps_the_events(topic, tmp_path,
                                                                           monkeypatch):
    """SIGTERM to a relay whose broker is frozen: it stops in well under 10 s (Docker's grace
    period) although its close timeout is longer, exit status 0, the events kept in the
    journals, and the next relay delivers them."""
    from openalgo_events.devbroker import DevBroker

    spool = str(tmp_path / "spool")
    monkeypatch.setenv("OPENALGO_EVENTS_RELAY_AUTOSTART", "FALSE")  # the relays are ours
    with DevBroker() as broker:
        create_topic(broker.bootstrap_servers, topic)
        collector = TopicCollector(broker.bootstrap_servers, topic)
        env = relay_env(broker.bootstrap_servers, topic, spool, KAFKA_CLOSE_TIMEOUT_SECONDS="30",
                        KAFKA_STALL_TIMEOUT_SECONDS="2")
        command = [sys.executable, "-m", "openalgo_events.relay"]
        publisher = KafkaEventPublisher(broker.bootstrap_servers, topic, settings=Settings
                                        .from_env({"KAFKA_SPOOL_PATH": spool}))
        first = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        second = None
        try:
            wait_for(lambda: relay_pid(spool) == first.pid, 15, message="the first relay")
            os.kill(broker.process.pid, signal.SIGSTOP)
            ids = [publisher.publish_order_event("alice", "SBIN", "BUY", str(i), "live")
                   .event_id for i in range(50)]
            wait_for(lambda: Spool(spool).status().get("broker_reachable") is False, 30,
                     message="the relay to see the broker gone")
            started = time.monotonic()
            first.send_signal(signal.SIGTERM)
            _, err = first.communicate(timeout=20)
            assert time.monotonic() - started < 5, err
            assert first.returncode == 0, err
            assert "stopped; 50 events pending for the next relay" in err
            assert "Traceback" not in err
            os.kill(broker.process.pid, signal.SIGCONT)
            second = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
            wait_for(lambda: set(ids) <= set(collector.event_ids()), 30,
                     message="the next relay to deliver the kept events")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(broker.process.pid, signal.SIGCONT)
            publisher.close()
            collector.stop()
            for relay in (first, second):
                if relay is not None and relay.poll() is None:
                    relay.terminate()
                    relay.wait(20)


def test_sigterm_before_the_frozen_broker_ever_answered_stops_at_once(topic, tmp_path,
                                                                     monkeypatch):
    """SIGTERM to a relay still starting its transactions against a broker frozen from the
    start (its calls wait up to 10 s for an answer): it stops in well under 10 s, exit status
    0, the events kept in the journals."""
    from openalgo_events.devbroker import DevBroker

    spool = str(tmp_path / "spool")
    monkeypatch.setenv("OPENALGO_EVENTS_RELAY_AUTOSTART", "FALSE")  # the relay is ours
    with DevBroker() as broker:
        create_topic(broker.bootstrap_servers, topic)
        publisher = KafkaEventPublisher(broker.bootstrap_servers, topic, settings=Settings
                                        .from_env({"KAFKA_SPOOL_PATH": spool}))
        os.kill(broker.process.pid, signal.SIGSTOP)
        relay = subprocess.Popen(
            [sys.executable, "-m", "openalgo_events.relay"], stderr=subprocess.PIPE, text=True,
            env=relay_env(broker.bootstrap_servers, topic, spool,
                          KAFKA_CLOSE_TIMEOUT_SECONDS="30"))
        try:
            for i in range(5):
                publisher.publish_order_event("alice", "SBIN", "BUY", str(i), "live")
            wait_for(lambda: relay_pid(spool) == relay.pid, 15, message="the relay")
            time.sleep(1.0)  # inside its first wait for the frozen broker
            started = time.monotonic()
            relay.send_signal(signal.SIGTERM)
            _, err = relay.communicate(timeout=20)
            assert time.monotonic() - started < 5, err
            assert relay.returncode == 0, err
            assert "stopped; 5 events pending for the next relay" in err
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(broker.process.pid, signal.SIGCONT)
            publisher.close()
            if relay.poll() is None:
                relay.kill()
                relay.wait()


def test_segments_of_a_live_writer_are_followed_and_kept_as_trail(kafka_bootstrap, topic,
                                                                  spool):
    """A writer filling several segments: the relay follows it from one to the next and
    delivers every event once; the sealed segments stay, as the trail, for replay."""
    create_topic(kafka_bootstrap, topic, partitions=3)
    collector = TopicCollector(kafka_bootstrap, topic)
    publisher = KafkaEventPublisher(kafka_bootstrap, topic, settings=Settings.from_env(
        {"KAFKA_SPOOL_PATH": spool}))
    note = "x" * 4000  # about 4.3 KB a record: a 1 MiB segment holds about 240
    try:
        ids = [publisher.publish_order_event(f"u{i % 5}", "SBIN", "BUY", str(i), "live",
                                             note=note).event_id for i in range(1000)]
        assert publisher.flush(60) == 0
        wait_for(lambda: set(ids) <= set(collector.event_ids()), 60,
                 message="every event on the topic")
        assert len(collector.event_ids()) == 1000
        with Spool(spool) as opened:
            assert opened.trail_size()[0] >= 3 * fmt.SEGMENT_BYTES
            assert sum(1 for _ in opened.trail(user_id="u1")) == 200
    finally:
        publisher.close()
        collector.stop()


def test_relays_that_live_seconds_keep_the_trail_in_bounds(kafka_bootstrap, topic, spool):
    """Four short scripts, each publishing about 1.5 MB: each one's relay delivers and exits
    within seconds, and the trail never holds more than KAFKA_TRAIL_MAX_BYTES (1 MiB) after
    one has exited."""
    create_topic(kafka_bootstrap, topic)
    collector = TopicCollector(kafka_bootstrap, topic)
    limit = 1024 * 1024
    sizes = []
    try:
        for _run in range(4):
            ids = run_script(kafka_bootstrap, topic, spool, "1500", "900",
                             env={"KAFKA_TRAIL_MAX_BYTES": str(limit)})
            wait_for(lambda ids=ids: set(ids) <= set(collector.event_ids()), 30,
                     message="the script's events on the topic")
            wait_relay_gone(spool, 30)
            with Spool(spool) as opened:
                sizes.append(opened.trail_size()[0])
        assert all(size <= limit for size in sizes), sizes
        assert any(size > 0 for size in sizes), sizes  # something is kept for replay
    finally:
        collector.stop()


def test_a_300k_backlog_drains_in_bounded_memory(kafka_bootstrap, topic, spool, monkeypatch):
    """300,000 events journaled while no relay runs, then a relay started: it streams the
    backlog (never holding it in memory): its RSS stays under 80 MB, and every event is
    delivered."""
    monkeypatch.setenv("OPENALGO_EVENTS_RELAY_AUTOSTART", "FALSE")
    create_topic(kafka_bootstrap, topic, partitions=5)
    publisher = KafkaEventPublisher(kafka_bootstrap, topic, settings=Settings.from_env(
        {"KAFKA_SPOOL_PATH": spool}))
    for i in range(300_000):
        publisher.publish_order_event(f"u{i % 50}", "SBIN", "BUY", str(i), "live")
    relay = subprocess.Popen([sys.executable, "-m", "openalgo_events.relay"],
                             env=relay_env(kafka_bootstrap, topic, spool),
                             stderr=subprocess.DEVNULL)
    peak = 0
    try:
        deadline = time.monotonic() + 240
        while publisher.flush(0.5):
            assert time.monotonic() < deadline, "the backlog was not drained in 240 s"
            with open(f"/proc/{relay.pid}/status") as status:
                rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
            peak = max(peak, rss)
        assert peak < 80 * 1024, f"relay RSS peaked at {peak} kB"
        from tests.support import read_topic

        assert len(read_topic(kafka_bootstrap, topic, 300_000, timeout=120)) == 300_000
    finally:
        publisher.close()
        relay.terminate()
        relay.wait(30)
