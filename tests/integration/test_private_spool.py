"""The spool belongs to its owner alone: a second local user, in a world-writable shared
directory, can read nothing, hold no lock, ring no doorbell, plant no journal and make the app
follow no link. The user is created for the test (root only)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator

import pytest

from openalgo_events import KafkaEventPublisher, Settings, SpoolError
from openalgo_events.spool import format as fmt
from tests.integration.relay_support import relay_pid, stop_relays
from tests.support import TopicCollector, create_topic, wait_for

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="creating a second user needs root"),
              pytest.mark.broker]


@pytest.fixture(scope="module")
def intruder() -> Iterator[pwd.struct_passwd]:
    """A second local user with no privilege and no home."""
    name = f"oae{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False)


@pytest.fixture
def shared() -> Iterator[str]:
    """A world-writable, sticky directory, as /tmp is."""
    path = tempfile.mkdtemp(prefix="oae-shared-", dir="/tmp")
    os.chmod(path, 0o1777)
    try:
        yield path
    finally:
        stop_relays(os.path.join(path, "spool"))
        shutil.rmtree(path, ignore_errors=True)


def as_user(user: pwd.struct_passwd, code: str, *args: str) -> dict[str, object]:
    """Run ``code`` (standard library only) as ``user``, with the system's Python (root's own
    interpreter may sit where another user cannot reach); it prints one JSON object."""
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    done = subprocess.run([python, "-c", textwrap.dedent(code), *args],
                          user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                          capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


ATTACKS = """
import fcntl, json, os, socket, sys
spool = sys.argv[1]
found = {}

def attempt(name, action):
    try:
        action()
        found[name] = "allowed"
    except OSError as exc:
        found[name] = type(exc).__name__

def read_everything():
    for root, dirs, files in os.walk(spool):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                handle.read(1)
    if not os.listdir(spool):
        raise PermissionError("empty")

def hold_relay_lock():
    fd = os.open(os.path.join(spool, "relay.lock"), os.O_RDONLY)
    fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)

def plant_journal():
    os.makedirs(os.path.join(spool, "writers", "1-1"))

def ring():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.connect(os.path.join(spool, "doorbell"))
    sock.send(b"x")

def plant_link():
    os.symlink("/etc/passwd", os.path.join(spool, "relay.log.1"))

for name, action in [("read", read_everything), ("lock", hold_relay_lock),
                     ("plant", plant_journal), ("ring", ring), ("link", plant_link)]:
    attempt(name, action)
print(json.dumps(found))
"""


def test_another_user_can_do_nothing_with_a_running_spool(kafka_bootstrap, topic, shared,
                                                          intruder):
    """With an app publishing and its relay running in a world-writable directory, another
    user fails to read any file, take the relay's lock, plant a journal, ring the doorbell or
    plant a link; the events still arrive."""
    create_topic(kafka_bootstrap, topic)
    collector = TopicCollector(kafka_bootstrap, topic)
    spool = os.path.join(shared, "spool")
    publisher = KafkaEventPublisher(kafka_bootstrap, topic, settings=Settings.from_env(
        {"KAFKA_SPOOL_PATH": spool}))
    try:
        first = publisher.publish_order_event("alice", "SBIN", "BUY", "1", "live").event_id
        wait_for(lambda: relay_pid(spool), 20, message="the relay")
        assert publisher.flush(20) == 0
        outcome = as_user(intruder, ATTACKS, spool)
        assert outcome == {name: "PermissionError" for name in
                           ("read", "lock", "plant", "ring", "link")}, outcome
        second = publisher.publish_order_event("alice", "SBIN", "BUY", "2", "live").event_id
        assert publisher.flush(20) == 0
        wait_for(lambda: {first, second} <= set(collector.event_ids()), 20,
                 message="the events on the topic")
    finally:
        publisher.close()
        collector.stop()


PLANT = """
import json, os, sys, zlib, struct
spool = sys.argv[1]
os.makedirs(os.path.join(spool, "writers", "1-1"), mode=0o777)
os.chmod(spool, 0o777)
meta = json.dumps([1, "forged", "order_event", "victim", 4, 0, "t", "s", None]).encode()
payload = meta + b"\\n" + b'{"event_id": "forged"}'
frame = struct.pack("<II", len(payload), zlib.crc32(payload)) + payload
with open(os.path.join(spool, "writers", "1-1", "1.seg"), "wb") as handle:
    handle.write(frame)
os.symlink("/etc/shadow", os.path.join(os.path.dirname(spool), "linked"))
print(json.dumps({"planted": True}))
"""


def test_a_spool_another_user_made_first_is_refused_never_used(kafka_bootstrap, topic, shared,
                                                                intruder):
    """Another user creates the spool's directory first, with a forged journal in it, and a
    symbolic link where a second spool would go: the app refuses both at start-up, naming the
    owner or the link and the fix, and never sends the forged record."""
    spool = os.path.join(shared, "spool")
    assert as_user(intruder, PLANT, spool) == {"planted": True}
    with pytest.raises(SpoolError, match=rf"spool directory {spool} belongs to user id "
                                         rf"{intruder.pw_uid}, not to this user"):
        KafkaEventPublisher(kafka_bootstrap, topic, settings=Settings.from_env(
            {"KAFKA_SPOOL_PATH": spool}))
    with pytest.raises(SpoolError, match="is a symbolic link, not a directory of its own"):
        KafkaEventPublisher(kafka_bootstrap, topic, settings=Settings.from_env(
            {"KAFKA_SPOOL_PATH": os.path.join(shared, "linked")}))
    assert relay_pid(spool) is None


def test_the_relay_sends_only_to_its_own_topic(kafka_bootstrap, topic, tmp_path):
    """A record whose metadata names another topic (where version 1 kept one) is sent to the
    spool's topic: nothing read from a file chooses where an event goes."""
    import time

    from confluent_kafka.admin import AdminClient

    from openalgo_events import Envelope
    from openalgo_events.spool import identity
    from openalgo_events.spool.directory import SpoolDirectory

    create_topic(kafka_bootstrap, topic)
    collector = TopicCollector(kafka_bootstrap, topic)
    spool = str(tmp_path / "spool")
    identity.claim(SpoolDirectory(spool), kafka_bootstrap, topic)
    envelope = Envelope("order_event", "alice", {"orderid": "1"})
    elsewhere = f"{topic}-elsewhere"
    meta = [1, envelope.event_id, "order_event", "alice", 3, time.time(), envelope.timestamp,
            "openalgo", None, elsewhere]
    directory = tmp_path / "spool" / fmt.WRITERS / "4242-1"
    directory.mkdir(parents=True, mode=0o700)
    (directory / fmt.WRITER_LOCK).touch(mode=0o600)
    (directory / "1.seg").write_bytes(fmt.encode(meta, envelope.value) + bytes(1024))
    os.chmod(directory / "1.seg", 0o600)
    relay = subprocess.Popen([sys.executable, "-m", "openalgo_events.relay", "--spool", spool,
                              "--exit-when-idle"],
                             env={**os.environ, "PYTHONPATH": os.getcwd(),
                                  "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                                  "KAFKA_ORDER_EVENTS_TOPIC": topic},
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: envelope.event_id in collector.event_ids(), 20,
                 message="the record on the spool's topic")
        assert relay.wait(30) == 0
        topics = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(
            timeout=10).topics
        assert elsewhere not in topics
    finally:
        if relay.poll() is None:
            relay.kill()
        collector.stop()
