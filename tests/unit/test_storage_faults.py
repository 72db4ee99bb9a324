"""Storage faults with real files: a full disk, a corrupt frame, files deleted under a running
spool, a trail that outgrows its size bound (docs/operations.md, "Storage faults")."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from openalgo_events import Envelope, Priority, SpoolError
from openalgo_events.spool import Spool
from tests.support import wait_for

ROOT = os.geteuid() == 0


def event(size: int = 100) -> Envelope:
    return Envelope("order_event", "alice", {"pad": "x" * size})


def stored_ids(path: str) -> set[str]:
    """Every event id in the spool file, pending or delivered (opening it recovers journals)."""
    spool = Spool(path)
    try:
        return {row[0] for row in spool._db.execute("SELECT event_id FROM events")}
    finally:
        spool.close()


def outcomes(log: Path) -> tuple[list[str], list[str]]:
    """(accepted, refused) event ids written by a child publisher, one line per call."""
    accepted, refused = [], []
    for line in log.read_text().splitlines():
        verdict, _, event_id = line.partition(" ")
        (accepted if verdict == "accepted" else refused).append(event_id)
    return accepted, refused


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A directory on its own small tmpfs (2 MiB), unmounted at the end."""
    if not ROOT:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def resize(mount: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)


# A publisher in its own process, so that a SIGBUS would show as its death: it appends events,
# commits now and then as the relay does, and logs each event's outcome as the call returns.
# Exits with os._exit, like a kill -9: nothing is closed or committed on the way out.
_PUBLISHER = textwrap.dedent("""
    import os, sqlite3, sys
    from openalgo_events import Envelope, Priority, SpoolError
    from openalgo_events.spool import Spool
    path, log, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(log, "w", buffering=1) as out:
        try:
            spool = Spool(path)
        except SpoolError as exc:
            print("start refused:", exc, flush=True)
            os._exit(3)
        for i in range(count):
            env = Envelope("order_event", "alice", {"pad": "x" * 1000})
            try:
                spool.append(env, "t", Priority.CRITICAL)
            except SpoolError as exc:
                out.write("refused " + env.event_id + "\\n")
                continue
            out.write("accepted " + env.event_id + "\\n")
            if i % 200 == 0:
                try:
                    spool.ingest()
                except (sqlite3.Error, SpoolError):
                    pass  # the disk is full: the records stay journaled and queued
    os._exit(0)
""")


def test_a_full_disk_refuses_events_and_never_kills_the_process(tmpfs):
    """On a full disk (tmpfs) the publishing process never dies of SIGBUS: every event either
    raises SpoolError (and is nowhere) or was accepted, and every accepted one is recovered."""
    resize(tmpfs, "12m")  # room for the database and two 4 MiB segments, not for a third
    path, log = str(tmpfs / "s.db"), tmpfs.parent / "outcomes.txt"
    child = subprocess.run([sys.executable, "-c", _PUBLISHER, path, str(log), "12000"],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, (child.returncode, child.stderr[-2000:])  # -7 is SIGBUS
    accepted, refused = outcomes(log)
    assert refused, "the disk never filled up: the test proves nothing"
    assert len(accepted) + len(refused) == 12000
    resize(tmpfs, "64m")  # free space: the next start recovers the journal into SQLite
    stored = stored_ids(path)
    assert set(accepted) <= stored
    assert not set(refused) & stored


def test_a_disk_too_small_for_a_segment_refuses_start_up(tmpfs):
    """On a disk with no room for one journal segment, the spool refuses to open with a
    SpoolError naming the fix, instead of dying at the first publish."""
    log = tmpfs.parent / "outcomes.txt"
    child = subprocess.run([sys.executable, "-c", _PUBLISHER, str(tmpfs / "s.db"), str(log),
                            "100"], capture_output=True, text=True, timeout=60)
    assert child.returncode == 3, (child.returncode, child.stderr[-2000:])
    assert "free space" in child.stdout
    assert not list(tmpfs.glob("s.db.journal.*"))  # no half-made segment left behind
    with pytest.raises(SpoolError, match="free space"):
        Spool(str(tmpfs / "s.db"))
    resize(tmpfs, "64m")
    Spool(str(tmpfs / "s.db")).close()  # the refused attempt released the spool's lock


def test_a_rotation_that_fails_leaves_the_journal_writable(tmp_path, monkeypatch):
    """When the next segment cannot be created the event raises SpoolError and nothing is
    written; once it can be, publishing goes on and every accepted event is recovered."""
    from openalgo_events import _journal

    monkeypatch.setattr(_journal, "SEGMENT_BYTES", 4096)
    path = str(tmp_path / "s.db")
    spool = Spool(path)
    number = spool._journal._number  # number + 1 is the spare, prepared at start-up
    blockers = [Path(f"{path}.journal.{n}") for n in range(number + 2, number + 4)]
    for blocker in blockers:  # a file that cannot be created: a directory holds its name
        blocker.mkdir()
    accepted, refused = [], []
    for _ in range(40):
        env = event(300)
        try:
            spool.append(env, "t", Priority.CRITICAL)
            accepted.append(env.event_id)
        except SpoolError as exc:
            assert "s.db.journal" in str(exc)
            refused.append(env.event_id)
    assert refused and accepted
    for blocker in blockers:
        blocker.rmdir()
    for _ in range(40):
        env = event(300)
        spool.append(env, "t", Priority.CRITICAL)
        accepted.append(env.event_id)
    spool._lock_file.close()  # kill -9: nothing committed
    stored = stored_ids(path)
    assert set(accepted) <= stored and not set(refused) & stored


@pytest.mark.parametrize("where", ["payload", "length"])
def test_a_corrupt_frame_mid_segment_loses_only_itself(tmp_path, caplog, where):
    """A flipped byte in one journal frame (in its payload or its length) loses that record
    only: every later record of the segment is recovered, with a warning counting the skip."""
    path = str(tmp_path / "s.db")
    spool = Spool(path)
    envs = [event() for _ in range(20)]
    for env in envs:
        spool.append(env, "t", Priority.CRITICAL)
    spool._lock_file.close()  # kill -9: nothing committed
    segment = Path(spool._journal.current)
    data = bytearray(segment.read_bytes())
    at = data.index(envs[7].event_id.encode())  # in the eighth record's metadata
    if where == "length":  # the third byte of its header's length (the header precedes "[8,")
        at = data.rindex(b"[8,", 0, at) - 8 + 2
    data[at] ^= 0xFF
    segment.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="openalgo_events.journal"):
        again = Spool(path)
    ids = [row.event_id for row in again.pending(limit=100)]
    again.close()
    assert ids == [e.event_id for e in envs[:7] + envs[8:]]
    assert "skipped" in caplog.text and "corrupt bytes in 1 places" in caplog.text


def test_the_trail_is_pruned_by_size_oldest_delivered_first(tmp_path):
    """Past trail_max_bytes the oldest delivered rows are deleted first, and a pending row
    never, even when pending rows alone exceed the bound."""
    spool = Spool(str(tmp_path / "s.db"), trail_max_bytes=600_000)
    seqs = [spool.append(event(1000), "t", Priority.CRITICAL) for _ in range(1000)]
    spool.mark_delivered(seqs[:700])
    assert spool.used_bytes() > 1_000_000
    removed = spool.purge_expired()
    assert spool.used_bytes() <= 600_000
    rows = spool._db.execute("SELECT seq, delivered IS NULL FROM events ORDER BY seq").fetchall()
    assert [seq for seq, pending in rows if pending] == seqs[700:]  # every pending row kept
    delivered = [seq for seq, pending in rows if not pending]
    assert 0 < len(delivered) < 700 and removed == 700 - len(delivered)
    assert delivered == seqs[700 - len(delivered):700]  # the newest delivered ones stayed
    spool.close()
    small = Spool(str(tmp_path / "p.db"), trail_max_bytes=10_000)
    pending = [small.append(event(1000), "t", Priority.CRITICAL) for _ in range(50)]
    small.ingest()
    assert small.purge_expired() == 0
    assert [row.seq for row in small.pending()] == pending
    small.close()


# A spool in its own process with a relay-like thread that marks events delivered; it logs
# each accepted event and is killed with SIGKILL by the test.
_RUNNING_SPOOL = textwrap.dedent("""
    import sys, threading, time
    from openalgo_events import _journal, Envelope, Priority
    from openalgo_events.spool import Spool
    path, log, segment_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
    _journal.SEGMENT_BYTES = segment_bytes
    spool = Spool(path)

    def relay():
        marked = 0
        while True:
            time.sleep(0.01)
            last = spool.last_seq
            spool.mark_delivered(range(marked + 1, last // 2 + 1))  # half stays pending
            marked = max(marked, last // 2)

    threading.Thread(target=relay, daemon=True).start()
    with open(log, "w", buffering=1) as out:
        while True:
            env = Envelope("order_event", "alice", {"pad": "x" * 200})
            spool.append(env, "t", Priority.CRITICAL)
            out.write("accepted " + env.event_id + "\\n")
            time.sleep(0.0002)
""")


@pytest.mark.parametrize("victim", ["database", "database and WAL", "current segment",
                                    "every segment"])
def test_files_deleted_under_a_running_spool_lose_nothing(tmp_path, victim):
    """Spool file (and its WAL) or journal segments deleted while the spool runs (a tmp
    cleaner), then kill -9: after a restart every accepted event is in the spool."""
    path, log = str(tmp_path / "s.db"), tmp_path / "outcomes.txt"
    child = subprocess.Popen([sys.executable, "-c", _RUNNING_SPOOL, path, str(log), "65536"],
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: log.exists() and len(outcomes(log)[0]) > 2000, timeout=60)
        if victim.startswith("database"):
            os.remove(path)
            if victim == "database and WAL":
                os.remove(path + "-wal")
        else:
            segments = sorted(tmp_path.glob("s.db.journal.*"),
                              key=lambda p: int(p.suffix[1:]))
            for segment in segments if victim == "every segment" else segments[-2:]:
                segment.unlink()  # the current one, or the spare prepared after it
        before = len(outcomes(log)[0])
        wait_for(lambda: len(outcomes(log)[0]) > before + 3000, timeout=60)
    finally:
        child.send_signal(signal.SIGKILL)
        _, stderr = child.communicate(timeout=30)
    accepted, _ = outcomes(log)
    missing = set(accepted) - stored_ids(path)
    assert not missing, f"{len(missing)} of {len(accepted)} accepted events lost"
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "while in use" in stderr  # said so, at ERROR


def test_a_restored_spool_file_is_a_valid_database(tmp_path):
    """A spool file deleted in use is back at its path, complete, after the next commit."""
    path = str(tmp_path / "s.db")
    spool = Spool(path)
    seqs = [spool.append(event(), "t", Priority.CRITICAL) for _ in range(10)]
    spool.mark_delivered(seqs[:4])
    os.remove(path)
    more = [spool.append(event(), "t", Priority.CRITICAL) for _ in range(5)]
    spool.mark_delivered(more[:1])
    assert spool.restored == 1 and os.path.exists(path)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*), count(delivered) FROM events").fetchone() == (15, 5)
    spool.close()


def test_a_commit_that_fails_on_a_full_disk_loses_no_record(tmpfs, monkeypatch):
    """A commit that fails because the disk is full (SQLite writes its WAL at COMMIT) queues its
    records again: once there is room they are committed and marked, and the depth is right."""
    from openalgo_events import _journal

    monkeypatch.setattr(_journal, "SEGMENT_BYTES", 65536)
    resize(tmpfs, "8m")
    spool = Spool(str(tmpfs / "s.db"))
    seqs = [spool.append(event(2000), "t", Priority.CRITICAL) for _ in range(50)]
    filler = tmpfs / "filler"
    fd = os.open(filler, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        stat = os.statvfs(tmpfs)
        os.posix_fallocate(fd, 0, stat.f_bavail * stat.f_frsize)
    finally:
        os.close(fd)
    with pytest.raises(sqlite3.OperationalError, match="full"):
        spool.mark_delivered(seqs[:10])
    filler.unlink()
    assert spool.mark_delivered(seqs[:10]) == {"order_event": 10}
    assert spool.depth == 40
    assert [row.seq for row in spool.pending(limit=100)] == seqs[10:]
    spool.close()


def test_a_deleted_lock_file_is_taken_again(tmp_path, caplog):
    """A spool whose lock file was deleted takes it again at its next commit, so a second
    process still cannot claim the spool (and send its events twice)."""
    path = str(tmp_path / "s.db")
    spool = Spool(path)
    os.remove(path + ".lock")
    spool.append(event(), "t", Priority.CRITICAL)
    with caplog.at_level(logging.ERROR, logger="openalgo_events.spool"):
        spool.ingest()
    assert "it is taken again" in caplog.text
    with pytest.raises(SpoolError, match="in use by another process"):
        Spool(path)
    spool.close()


def test_trail_max_bytes_is_configured_and_checked(tmp_path):
    """KAFKA_TRAIL_MAX_BYTES reaches the spool the relay opens; a value under 1 MiB stops
    start-up with a ConfigError naming the variable."""
    from openalgo_events import ConfigError, Settings

    env = {"ORDER_EVENT_MODE": "KAFKA", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
           "KAFKA_SPOOL_PATH": str(tmp_path / "s.db")}
    spool = Spool.for_settings(Settings.from_env({**env, "KAFKA_TRAIL_MAX_BYTES": "5000000"}))
    try:
        assert spool.trail_max_bytes == 5_000_000
    finally:
        spool.close()
    assert Settings.from_env(env).trail_max_bytes == 1024 ** 3
    with pytest.raises(ConfigError, match="KAFKA_TRAIL_MAX_BYTES"):
        Settings.from_env({**env, "KAFKA_TRAIL_MAX_BYTES": "1000"})


def test_deleted_segments_are_journaled_again(tmp_path, monkeypatch, caplog):
    """Journal segments deleted under a running spool (the current one and full ones awaiting
    their commit) are found by check(), said once at ERROR, written again, and every record
    is recovered after a crash; a second check finds nothing more."""
    from openalgo_events import _journal

    monkeypatch.setattr(_journal, "SEGMENT_BYTES", 4096)
    path = str(tmp_path / "s.db")
    spool = Spool(path)
    envs = [event(300) for _ in range(30)]
    for env in envs:
        spool.append(env, "t", Priority.CRITICAL)
    journal = spool._journal
    assert len(journal._retired) > 2
    journal.prepare()  # a spare too: check() must not move the records into a deleted file
    for segment in tmp_path.glob("s.db.journal.*"):
        segment.unlink()
    with caplog.at_level(logging.ERROR, logger="openalgo_events.journal"):
        lost = journal.check()
        assert journal.check() == []
    assert len(lost) == len(set(lost)) > 3
    assert caplog.text.count("were deleted while in use") == 1
    spool._lock_file.close()  # kill -9: nothing committed
    again = Spool(path)
    assert [row.event_id for row in again.pending(limit=100)] == [e.event_id for e in envs]
    again.close()


def test_events_not_stored_are_a_metric(tmp_path, monkeypatch):
    """An event the spool could not store counts in openalgo_events_not_stored_total, and the
    publisher's health is red with the storage error."""
    from openalgo_events import EventNotStoredError, EventPublisher, _journal
    from openalgo_events.devbroker import free_port
    from openalgo_events.integrations.metrics import exposition, metrics_registry
    from openalgo_events.transports.kafka import KafkaTransport

    monkeypatch.setattr(_journal, "SEGMENT_BYTES", 4096)
    path = str(tmp_path / "s.db")
    transport = KafkaTransport({"bootstrap.servers": f"127.0.0.1:{free_port()}"}, "t",
                               spool=Spool(path))
    publisher = EventPublisher(transport)
    number = transport.spool._journal._number  # number + 1: the spare, prepared at start-up
    for n in range(number + 2, number + 6):  # a file that cannot be created: a directory
        Path(f"{path}.journal.{n}").mkdir()
    refused = 0
    for i in range(40):
        try:
            publisher.publish_order_event("alice", "SBIN-EQ", "BUY", f"O{i}", "live",
                                          pad="x" * 300)
        except EventNotStoredError:
            refused += 1
    assert refused
    text = exposition(metrics_registry(lambda: publisher))[0].decode()
    assert f'openalgo_events_not_stored_total{{event_type="order_event"}} {refused}.0' in text
    assert not publisher.health()["healthy"]
    publisher.close(0)


def test_a_lock_file_taken_again_by_two_threads_at_once_stays_ours(tmp_path):
    """Two threads of the spool's process that find the lock file deleted at the same moment
    (the relay's check and a commit) both see it taken again by this process: neither mistakes
    the other's new flock for a stranger's (which would stop the relay for nothing)."""
    import threading

    path = str(tmp_path / "s.db")
    spool = Spool(path)
    for _ in range(20):
        os.remove(path + ".lock")
        start = threading.Barrier(4)
        results: list[bool] = []

        def check(start: threading.Barrier, results: list[bool]) -> None:
            start.wait()
            results.append(spool.keep_lock())

        threads = [threading.Thread(target=check, args=(start, results)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert results == [True] * 4
        with pytest.raises(SpoolError, match="in use by another process"):
            Spool(path)
    spool.close()


def test_a_lock_file_another_process_holds_is_not_ours(tmp_path, caplog):
    """A lock file replaced by one another process holds (a second relay that started while the
    file was gone) cannot be taken again: ``keep_lock`` says so (the relay then stops) and logs
    the cause once."""
    from openalgo_events import spooldir

    path = str(tmp_path / "s.db")
    spool = Spool(path)
    other = spooldir.take_lock(path + ".other")
    assert other is not None
    os.replace(path + ".other", path + ".lock")
    try:
        with caplog.at_level(logging.ERROR, logger="openalgo_events.spool"):
            assert spool.keep_lock() is False
            assert spool.keep_lock() is False
        assert caplog.text.count("cannot be taken again") == 1
    finally:
        other.close()
    assert spool.keep_lock() is True  # released: this process takes it
    spool.close()
