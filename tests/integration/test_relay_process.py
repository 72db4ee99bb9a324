"""The relay runs in its own process: hosts only journal (issue 13).

Real processes and a real broker: a script that exits without ``close()``, a fork after the
publisher is built, a relay killed with -9 and restarted, a host killed with -9, a cluster
mismatch refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from openalgo_events import KafkaEventPublisher, Settings, spooldir
from openalgo_events.errors import ConfigError
from tests.integration.relay_support import relay_processes
from tests.support import TopicCollector, create_topic, wait_for

pytestmark = [pytest.mark.broker]

SCRIPT = textwrap.dedent("""
    import sys
    from openalgo_events import KafkaEventPublisher, Settings
    bootstrap, topic, spool, count = sys.argv[1:5]
    settings = Settings.from_env({"KAFKA_SPOOL_PATH": spool})
    publisher = KafkaEventPublisher(bootstrap, topic, settings=settings)
    for i in range(int(count)):
        env = publisher.publish_order_event(f"user{i % 10}", "SBIN", "BUY", str(i), "live")
        print(env.event_id, flush=True)
    # no close(), no flush(): the README's snippet, as short scripts are written
""")


def run_script(*args: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def relay_pid(spool: str) -> int | None:
    status = spooldir.read_status(spool) or {}
    return status.get("pid") if spooldir.relay_running(spool) else None


def stop_relay(spool: str) -> None:
    """SIGTERM the spool's relay and wait for it to let go of the spool."""
    pid = relay_pid(spool)
    if pid:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not spooldir.relay_running(spool), 20, message="relay to stop")


@pytest.fixture
def spool(tmp_path: Path):
    path = str(tmp_path / "spool.db")
    yield path
    stop_relay(path)


def test_script_exiting_without_close_delivers_everything(kafka_bootstrap, topic, spool):
    """A script publishing 100 events and exiting without close(): all 100 reach the topic
    within 10 s of its exit, sent by the relay it started, which then exits by itself."""
    create_topic(kafka_bootstrap, topic)
    collector = TopicCollector(kafka_bootstrap, topic)
    try:
        ids = run_script(kafka_bootstrap, topic, spool, "100")
        exited = time.monotonic()
        assert len(ids) == 100
        wait_for(lambda: set(ids) <= set(collector.event_ids()), 10,
                 message="100 events on the topic")
        assert time.monotonic() - exited < 10
        wait_for(lambda: not spooldir.relay_running(spool), 20, message="the idle relay to exit")
        assert not os.listdir(spooldir.writers_dir(spool))  # the dead writer's journal removed
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
        if pid == 0:  # the child: publish, report, exit without cleanup
            try:
                ids = [publisher.publish_order_event("bob", "SBIN", "BUY", f"c{i}", "live")
                       .event_id for i in range(5)]
                writer = publisher.transport._writer  # type: ignore[attr-defined]
                os.write(write, json.dumps([ids, writer]).encode())
            finally:
                os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        with os.fdopen(read) as pipe:
            child_ids, child_writer = json.loads(pipe.read())
        assert child_writer != publisher.transport._writer  # type: ignore[attr-defined]
        wait_for(lambda: {parent_id, *child_ids} <= set(collector.event_ids()), 20,
                 message="parent and child events on the topic")
        assert publisher.flush(10) == 0  # the parent's own event is confirmed to the parent
    finally:
        publisher.close()
        collector.stop()


def test_relay_killed_9_mid_stream_loses_nothing(kafka_bootstrap, topic, spool):
    """kill -9 of the relay while a host publishes: the host starts a new relay, and every
    event arrives."""
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
    finally:
        publisher.close()
        collector.stop()


def test_other_cluster_or_topic_is_refused(kafka_bootstrap, topic, spool):
    """A publisher for another topic on a spool whose relay sends elsewhere is refused at
    construction, with the way out."""
    settings = Settings.from_env({"KAFKA_SPOOL_PATH": spool})
    KafkaEventPublisher(kafka_bootstrap, topic, settings=settings).close()
    with pytest.raises(ConfigError, match=r"belongs to a relay for .* own KAFKA_SPOOL_PATH"):
        KafkaEventPublisher(kafka_bootstrap, topic + "-other", settings=settings)


def test_lock_file_deleted_under_the_relay_is_taken_again(kafka_bootstrap, topic, spool):
    """Deleting the spool's lock file under a running relay (a tmp cleaner) does not stop it:
    the relay takes the lock file again within a second, so hosts still find it running and
    start no second relay, and it goes on delivering."""
    create_topic(kafka_bootstrap, topic)
    collector = TopicCollector(kafka_bootstrap, topic)
    settings = Settings.from_env({"KAFKA_SPOOL_PATH": spool})
    publisher = KafkaEventPublisher(kafka_bootstrap, topic, settings=settings)
    try:
        first = publisher.publish_order_event("alice", "SBIN", "BUY", "1", "live").event_id
        pid = wait_for(lambda: relay_pid(spool), 10, message="a relay")
        os.remove(spooldir.relay_lock_path(spool))
        wait_for(lambda: spooldir.relay_running(spool), 5,
                 message="the lock file taken again by the relay")
        wait_for(lambda: "it is taken again" in Path(spooldir.log_path(spool)).read_text(), 5,
                 message="the relay to say it took the lock file again")
        assert relay_processes(spool) == [pid]  # the same relay, and only it
        second = publisher.publish_order_event("alice", "SBIN", "BUY", "2", "live").event_id
        assert publisher.flush(30) == 0
        wait_for(lambda: {first, second} <= set(collector.event_ids()), 30,
                 message="both events delivered")
        assert relay_processes(spool) == [pid]
    finally:
        publisher.close()
        collector.stop()


def test_lock_file_taken_by_another_process_stops_the_relay(kafka_bootstrap, topic, spool):
    """When another process holds a new lock file at the spool's path (a relay started while
    the old file was gone), the running relay stops, so that two relays never serve one spool
    path, and says why in its log."""
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "KAFKA_ORDER_EVENTS_TOPIC": topic}
    relay = subprocess.Popen([sys.executable, "-m", "openalgo_events.relay", "--spool", spool],
                             env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: relay_pid(spool) == relay.pid, 20, message="the relay running")
        # replaced in one step by a file this test holds: the relay cannot take it again
        stranger_path = spooldir.relay_lock_path(spool) + ".other"
        stranger = spooldir.take_lock(stranger_path)
        assert stranger is not None
        os.replace(stranger_path, spooldir.relay_lock_path(spool))
        try:
            assert relay.wait(20) == 0
        finally:
            stranger.close()
        _, err = relay.communicate(timeout=10)
        assert "another process holds it now; stopping" in err, err
    finally:
        if relay.poll() is None:
            relay.kill()
        relay.communicate(timeout=10)  # reaped, its pipe closed


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] == "Z"
    except OSError:
        return True


def test_corrupt_frame_in_a_dead_writers_journal_is_skipped_and_counted(kafka_bootstrap, topic,
                                                                        spool):
    """A dead writer's journal with a corrupt frame between two good ones: the relay delivers
    both good records, skips the bad one and logs it with a count."""
    from openalgo_events._journal import Journal, encode
    from openalgo_events.envelope import Envelope, json_bytes

    create_topic(kafka_bootstrap, topic)
    collector = TopicCollector(kafka_bootstrap, topic)
    writer = Path(spooldir.writers_dir(spool)) / "99999-1"
    writer.mkdir(parents=True)
    (writer / "lock").touch()  # nobody holds it: a dead writer
    journal = Journal(str(writer / spooldir.JOURNAL_NAME))
    ids = []
    for seq in (1, 2, 3):
        envelope = Envelope("order_event", "alice", {"orderid": str(seq)})
        ids.append(envelope.event_id)
        row = json_bytes([seq, envelope.event_id, "order_event", "alice", 3, time.time(), topic,
                          "alice", None, len(envelope.value)])
        frame = bytearray(encode(row, envelope.value))
        if seq == 2:
            frame[12] ^= 0xFF  # a flipped byte in the payload: the CRC no longer matches
        journal.write(bytes(frame))
    journal.close()
    spooldir.Identity(kafka_bootstrap, topic).claim(spool)
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "KAFKA_ORDER_EVENTS_TOPIC": topic}
    relay = subprocess.Popen([sys.executable, "-m", "openalgo_events.relay", "--spool", spool,
                              "--exit-when-idle"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: {ids[0], ids[2]} <= set(collector.event_ids()), 20,
                 message="the two good records on the topic")
        _, err = relay.communicate(timeout=30)  # it exits once the dead writer is drained
        assert "corrupt frame in writer 99999-1's journal, segment 1 at offset" in err
        assert "(1 so far for this writer)" in err
        assert ids[1] not in collector.event_ids()
        assert not writer.exists()
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.wait()
        collector.stop()


def test_cli_relay_in_the_foreground_serves_health_and_stops_on_sigterm(kafka_bootstrap, topic,
                                                                         spool, monkeypatch):
    """`openalgo-events relay` (systemd, sidecar) sends a host's events with autostart off,
    answers /health and /metrics on its loopback port, and exits 0 on SIGTERM, having let go
    of the spool."""
    import urllib.request

    from openalgo_events.devbroker import free_port

    create_topic(kafka_bootstrap, topic)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "KAFKA_ORDER_EVENTS_TOPIC": topic, "KAFKA_SPOOL_PATH": spool}
    cli = str(Path(sys.executable).parent / "openalgo-events")
    relay = subprocess.Popen([cli, "relay", "--port", str(port)], env=env,
                             stderr=subprocess.PIPE, text=True)
    collector = TopicCollector(kafka_bootstrap, topic)
    monkeypatch.setenv("OPENALGO_EVENTS_RELAY_AUTOSTART", "FALSE")  # the relay is ours
    publisher = KafkaEventPublisher(kafka_bootstrap, topic, settings=Settings.from_env(
        {"KAFKA_SPOOL_PATH": spool}))
    try:
        wait_for(lambda: spooldir.relay_running(spool), 15, message="the relay holds the spool")
        ids = [publisher.publish_order_event("alice", "SBIN", "BUY", str(i), "live").event_id
               for i in range(20)]
        assert publisher.flush(15) == 0
        wait_for(lambda: set(ids) <= set(collector.event_ids()), 15, message="20 on the topic")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
            health = json.loads(answer.read())
        assert health["healthy"] is True and health["spool_depth"] == 0
        assert health["pid"] == relay.pid and health["port"] == port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            assert b'openalgo_events_delivered_total{event_type="order_event",transport="kafka"}' \
                in answer.read()
        relay.send_signal(signal.SIGTERM)
        _, err = relay.communicate(timeout=15)
        assert relay.returncode == 0, err
        assert not spooldir.relay_running(spool)
        assert "stopped; 0 events pending" in err
        # with no relay, what the app journals is still counted as pending by the operator's
        # read-only status
        for i in range(3):
            publisher.publish_order_event("alice", "SBIN", "BUY", f"late{i}", "live")
        status = subprocess.run([cli, "spool", "status", "--json"], env=env, text=True,
                                capture_output=True, timeout=30)
        assert json.loads(status.stdout)["depth"] == 3, status.stderr
    finally:
        publisher.close()
        collector.stop()
        if relay.poll() is None:
            relay.kill()
            relay.wait()


def test_sigterm_with_the_broker_frozen_stops_in_time_and_keeps_the_events(topic, tmp_path,
                                                                           monkeypatch):
    """SIGTERM to a relay whose broker is frozen: it stops within the close timeout plus a
    margin, exit status 0, the events kept in the spool, and the next relay delivers them."""
    from openalgo_events.devbroker import DevBroker

    spool = str(tmp_path / "spool.db")
    monkeypatch.setenv("OPENALGO_EVENTS_RELAY_AUTOSTART", "FALSE")  # the relays are ours
    with DevBroker() as broker:
        create_topic(broker.bootstrap_servers, topic)
        collector = TopicCollector(broker.bootstrap_servers, topic)
        env = {**os.environ, "PYTHONPATH": os.getcwd(),
               "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
               "KAFKA_ORDER_EVENTS_TOPIC": topic, "KAFKA_SPOOL_PATH": spool,
               "KAFKA_CLOSE_TIMEOUT_SECONDS": "2"}
        command = [sys.executable, "-m", "openalgo_events.relay"]
        publisher = KafkaEventPublisher(broker.bootstrap_servers, topic, settings=Settings
                                        .from_env({"KAFKA_SPOOL_PATH": spool}))
        first = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        second = None
        try:
            wait_for(lambda: spooldir.relay_running(spool), 15, message="the first relay")
            os.kill(broker.process.pid, signal.SIGSTOP)
            ids = [publisher.publish_order_event("alice", "SBIN", "BUY", str(i), "live")
                   .event_id for i in range(50)]
            wait_for(lambda: (spooldir.read_status(spool) or {}).get("spool_depth") == 50, 10,
                     message="the relay to hold the 50 events")
            started = time.monotonic()
            first.send_signal(signal.SIGTERM)
            _, err = first.communicate(timeout=20)
            assert time.monotonic() - started < 2 + 5
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


def test_full_segments_of_a_live_writer_are_read_on_and_deleted(kafka_bootstrap, topic, spool):
    """A writer filling three journal segments (4 MiB each): the relay follows it from one
    segment to the next, delivers every event, and deletes each segment once committed, while
    the writer keeps its current one."""
    create_topic(kafka_bootstrap, topic)
    collector = TopicCollector(kafka_bootstrap, topic)
    publisher = KafkaEventPublisher(kafka_bootstrap, topic, settings=Settings.from_env(
        {"KAFKA_SPOOL_PATH": spool}))
    note = "x" * 4000  # about 4.4 KB a record: a segment holds about 950 of them
    try:
        ids = [publisher.publish_order_event("alice", "SBIN", "BUY", str(i), "live", note=note)
               .event_id for i in range(2600)]
        writer = os.path.join(spooldir.writers_dir(spool),
                              publisher.transport._writer)  # type: ignore[attr-defined]
        assert publisher.transport._journal._number >= 3  # type: ignore[attr-defined]
        assert publisher.flush(60) == 0
        wait_for(lambda: set(ids) <= set(collector.event_ids()), 60,
                 message="every event on the topic")
        current = publisher.transport._journal.current  # type: ignore[attr-defined]
        wait_for(lambda: spooldir.segments(writer) == [current], 10,
                 message="only the segment being written left")
    finally:
        publisher.close()
        collector.stop()
