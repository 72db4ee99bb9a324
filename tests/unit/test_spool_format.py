"""The spool's on-disk format, its identity and its private directory, without a relay."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from openalgo_events import KafkaEventPublisher, Settings
from openalgo_events.errors import ConfigError, SpoolError
from openalgo_events.spool import Spool, identity, refuse_version_1
from openalgo_events.spool import format as fmt
from openalgo_events.spool.directory import SpoolDirectory


@pytest.fixture(autouse=True)
def no_relay(monkeypatch):
    monkeypatch.setenv("OPENALGO_EVENTS_RELAY_AUTOSTART", "FALSE")  # nothing to send to


META = ["id1", "order_event", "alice", 3, 1.5, "2026-01-01T00:00:00Z", "openalgo", None]


def test_a_frame_round_trips_and_a_torn_one_is_found_and_passed_over():
    """encode/decode give back the record; a frame with a flipped bit is BadFrame and resync
    finds the next intact one; frames() yields the intact ones only."""
    good, last = fmt.encode([1, *META], b"a"), fmt.encode([3, *META], b"c")
    bad = bytearray(fmt.encode([2, *META], b"b"))
    bad[-1] ^= 0xFF
    data = good + bytes(bad) + last + bytes(32)
    end, payload = fmt.frame_at(data, 0)
    assert end == len(good) and fmt.decode(payload) == ([1, *META], b"a")
    with pytest.raises(fmt.BadFrame):
        fmt.frame_at(data, len(good))
    assert fmt.resync(data, len(good)) == len(good) + len(bad)
    assert [fmt.decode(p)[0][0] for _, _, p in fmt.frames(data)] == [1, 3]
    assert fmt.frame_at(data, len(data) - 16) is None  # the zeroed rest: the end


def test_frames_resume_past_a_zeroed_hole():
    """A hole of zeros between frames (a truncated segment its writer wrote past) is passed
    over when a whole segment is read."""
    data = fmt.encode([1, *META], b"a") + bytes(4096) + fmt.encode([2, *META], b"b")
    assert [fmt.decode(p)[0][0] for _, _, p in fmt.frames(data)] == [1, 2]


@pytest.mark.parametrize("meta", [b'{"not": "a list"}', b'[0, "x"]', b'["1", "x"]',
                                  b'[1, 2, 3, 4, 5, 6, 7, 8, 9]', b"not json"])
def test_metadata_that_is_not_a_records_is_a_value_error(meta):
    """A frame whose CRC is good but whose metadata is not a record's is refused by decode."""
    with pytest.raises(ValueError):
        fmt.decode(meta + b"\n{}")


def test_a_record_file_keeps_the_last_whole_write(tmp_path):
    """The ledger's format: the newest valid slot wins; a torn write of the newer slot leaves
    the previous state readable; a body past the slot size regrows the file."""
    fd = os.open(tmp_path / "ledger", os.O_RDWR | os.O_CREAT, 0o600)
    record = fmt.RecordFile(fd)
    record.write({"writers": {"a": [1, 1, 10, 0, 0]}})
    record.write({"writers": {"a": [2, 1, 20, 0, 0]}})
    assert fmt.read_record(fd)[1] == {"writers": {"a": [2, 1, 20, 0, 0]}}
    os.pwrite(fd, b"\0" * 40, (record.generation % 2) * record.slot_bytes + 20)  # torn newest
    assert fmt.read_record(fd)[1] == {"writers": {"a": [1, 1, 10, 0, 0]}}
    big = {"writers": {f"w{i}": [i, 1, i, 0, 0] for i in range(8000)}}
    record.write(big)
    assert fmt.read_record(fd)[1] == big and record.slot_bytes > fmt.SLOT_BYTES
    reopened = fmt.RecordFile(fd)
    reopened.write({"writers": {}})
    assert fmt.read_record(fd)[1] == {"writers": {}}


def test_identity_mismatch_is_refused_with_the_fix(tmp_path):
    """A spool claimed for one cluster and topic refuses another, naming both and the way out;
    the same cluster in another order, or with spaces, is the same."""
    spool = SpoolDirectory(str(tmp_path / "s"))
    identity.claim(spool, "k1:9092,k2:9092", "orders")
    identity.claim(spool, "k2:9092, k1:9092", "orders")
    with pytest.raises(ConfigError, match=r"k1:9092,k2:9092 topic orders, not k1:9092 topic "
                                          r"other.*its own KAFKA_SPOOL_PATH"):
        identity.claim(spool, "k1:9092", "other")


def test_a_torn_identity_is_replaced_and_the_check_holds_after(tmp_path):
    """An empty identity file (a claimant killed mid-write) does not stop a start."""
    spool = SpoolDirectory(str(tmp_path / "s"))
    os.close(spool.open(fmt.IDENTITY, os.O_WRONLY, create=True))
    identity.claim(spool, "k1:9092", "orders")
    assert identity.read(spool)["topic"] == "orders"
    with pytest.raises(ConfigError, match="not k2:9092 topic orders"):
        identity.claim(spool, "k2:9092", "orders")


def test_racing_identity_claims_let_exactly_one_in(tmp_path):
    """Twenty threads claiming two different identities at once: one identity wins and every
    claimant of the other is refused."""
    spool = SpoolDirectory(str(tmp_path / "s"))
    outcomes: list[str] = []

    def claim(topic: str) -> None:
        try:
            identity.claim(spool, "k:9092", topic)
            outcomes.append(topic)
        except ConfigError:
            outcomes.append("refused")

    threads = [threading.Thread(target=claim, args=(f"t{i % 2}",)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winner = identity.read(spool)["topic"]
    assert outcomes.count(winner) == 10 and outcomes.count("refused") == 10


def test_the_spool_is_private_whatever_the_umask(tmp_path):
    """With a umask of 0, the spool directory, its subdirectories and every file the publisher
    and its journal create are 0700 and 0600."""
    old = os.umask(0)
    try:
        publisher = KafkaEventPublisher("127.0.0.1:9", "orders", settings=Settings.from_env(
            {"KAFKA_SPOOL_PATH": str(tmp_path / "spool")}))
        publisher.publish_order_event("alice", "SBIN", "BUY", "1", "live")
        publisher.close()
    finally:
        os.umask(old)
    modes = {}
    for root, dirs, files in os.walk(tmp_path / "spool"):
        for name in dirs + files:
            path = os.path.join(root, name)
            modes[os.path.relpath(path, tmp_path)] = stat.S_IMODE(os.lstat(path).st_mode)
    modes["spool"] = stat.S_IMODE(os.lstat(tmp_path / "spool").st_mode)
    assert any(p.endswith(".seg") for p in modes), modes
    wrong = {p: oct(m) for p, m in modes.items() if m != (0o700 if os.path.isdir(
        tmp_path / p) else 0o600)}
    assert not wrong, wrong


def test_a_directory_writable_by_others_is_refused_with_the_fix(tmp_path):
    """A spool directory writable by group or others could hold planted journals: refused, with
    its path, its mode and the command that fixes it."""
    path = tmp_path / "shared"
    path.mkdir()
    path.chmod(0o777)
    with pytest.raises(SpoolError, match=rf"{path} is writable by group or others \(mode 777\)"
                                         rf".*chmod 700 {path}"):
        SpoolDirectory(str(path))


def test_a_symbolic_link_in_place_of_the_spool_or_a_file_is_not_followed(tmp_path):
    """A link where the spool directory should be is refused; a link planted in place of one of
    its files is never opened through."""
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(SpoolError, match="not a directory of its own"):
        SpoolDirectory(str(tmp_path / "link"))
    spool = SpoolDirectory(str(tmp_path / "s"))
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    os.symlink(victim, tmp_path / "s" / fmt.RELAY_LOG)
    with pytest.raises(OSError):
        spool.open(fmt.RELAY_LOG, os.O_WRONLY | os.O_APPEND, create=True)
    assert victim.read_text() == "mine"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_directory_another_user_owns_is_refused(tmp_path):
    """A spool directory owned by someone else is refused, naming the owner and the fix."""
    path = tmp_path / "theirs"
    path.mkdir(mode=0o700)
    os.chown(path, 4242, 4242)
    with pytest.raises(SpoolError, match=r"belongs to user id 4242.*of this user's own"):
        SpoolDirectory(str(path))


def test_the_default_spool_is_one_per_cluster_and_topic(tmp_path, monkeypatch):
    """Publishers for two topics in one working directory, each on the default spool, just
    work (as the seed's API is used: two KafkaEventPublisher calls); an explicit spool given to
    both is refused with the fix."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KAFKA_SPOOL_PATH", raising=False)
    settings = Settings.from_env({})
    first = KafkaEventPublisher("127.0.0.1:9", "topic-x", settings=settings)
    second = KafkaEventPublisher("127.0.0.1:9", "topic-y", settings=settings)
    try:
        paths = {first.transport.spool_path, second.transport.spool_path}
        assert len(paths) == 2
        assert all(os.path.dirname(p) == str(tmp_path / fmt.DEFAULT_ROOT) for p in paths)
        explicit = Settings.from_env({"KAFKA_SPOOL_PATH": str(tmp_path / "one")})
        KafkaEventPublisher("127.0.0.1:9", "topic-x", settings=explicit).close()
        with pytest.raises(ConfigError, match=r"topic topic-x, not 127\.0\.0\.1:9 topic topic-y"):
            KafkaEventPublisher("127.0.0.1:9", "topic-y", settings=explicit)
    finally:
        first.close()
        second.close()


def test_a_version_1_spool_file_is_refused_with_what_to_do(tmp_path):
    """KAFKA_SPOOL_PATH naming a version-1 SQLite spool says to point it at a directory and
    import the old file; a publisher refuses to start on it."""
    import sqlite3

    old = tmp_path / "openalgo_events_spool.db"
    sqlite3.connect(old).execute("CREATE TABLE events (seq INTEGER)").connection.close()
    with pytest.raises(SpoolError, match=r"version-1 spool file.*spool import"):
        refuse_version_1(str(old))
    with pytest.raises(SpoolError, match="version-1"):
        KafkaEventPublisher("127.0.0.1:9", "t", settings=Settings.from_env(
            {"KAFKA_SPOOL_PATH": str(old)}))


def test_an_absent_spool_is_named_by_the_tools(tmp_path):
    """The operators' view of a spool that does not exist names the path and what to pass."""
    with pytest.raises(SpoolError, match=rf"no spool directory at {tmp_path / 'nope'}.*--spool"):
        Spool(str(tmp_path / "nope"))
