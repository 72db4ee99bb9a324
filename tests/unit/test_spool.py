"""The spool on its own: pending and delivered rows, restarts, overflow, bad files, replay."""

from __future__ import annotations

import json
import logging
import sqlite3
import time

import pytest

from openalgo_events import Envelope, Priority, SpoolError
from openalgo_events.spool import REPLAY_HEADER, Spool


def event(user: str = "alice", event_type: str = "order_event", size: int = 10) -> Envelope:
    return Envelope(event_type, user, {"pad": "x" * size})


def test_pending_until_delivered_then_kept_as_trail(tmp_path):
    """A row is pending until marked delivered, then stays as the trail; depth and bytes follow."""
    spool = Spool(str(tmp_path / "s.db"))
    envs = [event() for _ in range(3)]
    for env in envs:
        assert spool.append(env, "topic", Priority.CRITICAL)
    rows = spool.pending()
    assert [r.event_id for r in rows] == [e.event_id for e in envs]
    assert rows[0].value == envs[0].value and rows[0].key == b"alice"
    assert dict(rows[0].headers)["ce_id"] == envs[0].event_id.encode()
    assert spool.status().pending_bytes == sum(len(e.value) for e in envs)
    assert spool.mark_delivered([rows[0].seq, rows[0].seq]) == {"order_event": 1}
    status = spool.status()
    assert (status.depth, status.delivered) == (2, 1)
    assert [r.seq for r in spool.pending(after_seq=rows[1].seq)] == [rows[2].seq]
    spool.close()


def test_a_record_reported_delivered_before_its_commit_is_written_delivered(tmp_path):
    """Queued records and delivery marks commit together: a record whose report came first is
    inserted delivered; the rest stay pending; a resent report counts nothing."""
    spool = Spool(str(tmp_path / "s.db"))
    seqs = [spool.append(event(), "t", Priority.CRITICAL) for _ in range(3)]
    assert spool.queued == 3
    changes = spool._db.total_changes
    assert spool.mark_delivered(seqs[:2]) == {"order_event": 2}
    assert spool._db.total_changes - changes == 3  # three inserts, no update
    assert spool.queued == 0 and spool.depth == 1
    assert [r.seq for r in spool.pending()] == seqs[2:]
    assert spool.mark_delivered(seqs) == {"order_event": 1}
    assert spool.status().delivered == 3 and spool.depth == 0
    spool.close()


def test_pending_events_survive_a_restart(tmp_path):
    """What was pending when the process stopped is pending again when it starts."""
    path = str(tmp_path / "s.db")
    spool = Spool(path)
    ids = [spool.append(e, "t", Priority.HIGH) and e.event_id for e in (event(), event())]
    spool.close()
    again = Spool(path)
    assert [r.event_id for r in again.pending()] == ids
    assert again.status().depth == 2
    again.close()


def test_overflow_sheds_low_and_medium_and_keeps_critical(caplog):
    """Over the size limit LOW and MEDIUM events are shed with a count and a log line; HIGH and
    CRITICAL ones are still kept."""
    spool = Spool(":memory:", max_bytes=600)
    while spool.status().pending_bytes < 600:
        spool.append(event(size=100), "t", Priority.CRITICAL)
    with caplog.at_level(logging.WARNING, logger="openalgo_events.spool"):
        assert not spool.append(event(event_type="master_contract_download"), "t", Priority.LOW)
        assert not spool.append(event(event_type="order_notification"), "t", Priority.MEDIUM)
        assert spool.append(event(), "t", Priority.CRITICAL)
        assert spool.append(event(event_type="analyzer_update"), "t", Priority.HIGH)
    status = spool.status()
    assert status.shed == 2 and status.over_limit
    assert spool.stats.count("shed", event_type="master_contract_download") == 1
    assert "shed master_contract_download" in caplog.text
    assert "over its limit" in caplog.text


def test_corrupt_file_is_a_clear_error_naming_path_and_fix(tmp_path):
    """A spool file that is not SQLite stops start-up with the path and what to do."""
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SpoolError) as info:
        Spool(str(path))
    assert str(path) in str(info.value) and "move it aside" in str(info.value)
    Spool(str(tmp_path / "other.db")).close()  # the lock was released, nothing leaked


@pytest.mark.parametrize("where", ["missing-dir/s.db", "a-directory"])
def test_unusable_path_is_a_clear_error(tmp_path, where):
    """A spool path in a missing directory, or one that is a directory, is refused with the fix."""
    (tmp_path / "a-directory").mkdir()
    with pytest.raises(SpoolError, match="KAFKA_SPOOL_PATH"):
        Spool(str(tmp_path / where))


def test_one_process_per_spool(tmp_path):
    """A second spool on the same file is refused: two relays would send everything twice."""
    first = Spool(str(tmp_path / "s.db"))
    with pytest.raises(SpoolError, match="in use by another process"):
        Spool(str(tmp_path / "s.db"))
    first.close()


def test_replay_requeues_one_users_window_with_a_marker(tmp_path):
    """Replay queues copies of the delivered events of one user in a window, same event ids,
    with the replay header; others stay untouched."""
    path = str(tmp_path / "s.db")
    spool = Spool(path)
    envs = [event("alice"), event("bob"), event("alice"), event("alice")]
    for env in envs:
        spool.append(env, "orders", Priority.CRITICAL)
    spool.mark_delivered(r.seq for r in spool.pending())
    with sqlite3.connect(path) as db:  # the first alice event happened long ago
        db.execute("UPDATE events SET created = created - 7200 WHERE event_id = ?",
                   (envs[0].event_id,))
    since = time.time() - 3600
    assert spool.replay(user_id="alice", since=since, dry_run=True) == 2
    assert spool.status().depth == 0
    assert spool.replay(user_id="alice", since=since, topic="replays") == 2
    rows = spool.pending()
    assert [r.event_id for r in rows] == [envs[2].event_id, envs[3].event_id]
    assert all(r.topic == "replays" and dict(r.headers)[REPLAY_HEADER] == b"1" for r in rows)
    assert json.loads(rows[0].value) == json.loads(envs[2].value)
    spool.close()


def test_retention_purges_only_old_delivered_rows(tmp_path):
    """Delivered rows past the retention are deleted; pending rows never are."""
    spool = Spool(str(tmp_path / "s.db"), retention_hours=1)
    spool.append(event(), "t", Priority.CRITICAL)
    spool.append(event(), "t", Priority.CRITICAL)
    spool.mark_delivered([spool.pending()[0].seq])
    assert spool.purge_expired(now=time.time() + 7200) == 1
    assert (spool.status().delivered, spool.status().depth) == (0, 1)
    spool.close()


def test_journaled_events_survive_a_crash_before_commit(tmp_path):
    """An event journaled but never committed to SQLite (the process died first) is pending at
    the next start, once; a torn last record is ignored."""
    path = str(tmp_path / "s.db")
    spool = Spool(path)
    envs = [event() for _ in range(3)]
    for env in envs:
        spool.append(env, "t", Priority.CRITICAL)
    spool.ingest()  # the first three reached SQLite; the next two only the journal
    late = [event(), event()]
    for env in late:
        spool.append(env, "t", Priority.CRITICAL)
    spool._lock_file.close()  # simulate kill -9: no close(), no ingest
    segment = sorted(tmp_path.glob("s.db.journal.*"))[-1]
    with open(segment, "ab") as handle:
        handle.write(b"\x10\x00\x00\x00torn")  # a record cut short by the crash
    again = Spool(path)
    assert [r.event_id for r in again.pending()] == [e.event_id for e in envs + late]
    assert again.status().depth == 5
    again.close()
    assert not list(tmp_path.glob("s.db.journal.*"))  # everything committed, journal released


def test_records_written_into_prepared_segments_survive_crashes(tmp_path, monkeypatch):
    """Commits have the next journal segment ready; records written into it after a rotation
    survive a crash, and so does a spare segment prepared at start-up, when the earlier run's
    segments are deleted."""
    from openalgo_events import _journal

    monkeypatch.setattr(_journal, "SEGMENT_BYTES", 4096)  # a few records per segment
    path = str(tmp_path / "s.db")
    spool = Spool(path)
    for run in range(2):
        for i in range(30):
            spool.append(event(size=200), "t", Priority.CRITICAL)
            if i in (9, 19):
                spool.ingest()  # commits prepare the next segment
                journal = spool._journal
                assert journal.segments()[-1] == f"{journal.prefix}{journal._number + 1}"
        journal = spool._journal
        assert journal.current != journal.segments()[0]  # the last ten span a rotation
        spool._lock_file.close()  # kill -9: the last ten records were never committed
        spool = Spool(path)
        assert spool.status().depth == 30 * (run + 1)
    assert [r.seq for r in spool.pending(limit=100)] == list(range(1, 61))
    spool.close()
    assert not list(tmp_path.glob("s.db.journal.*"))


def test_memory_spool_keeps_no_trail():
    """Without a file there is no trail: delivered events leave memory at once."""
    spool = Spool(":memory:")
    spool.append(event(), "t", Priority.CRITICAL)
    spool.mark_delivered([spool.pending()[0].seq])
    assert (spool.status().delivered, spool.status().depth) == (0, 0)
    assert spool.replay(since=0, dry_run=True) == 0


def test_ingest_returns_only_when_everything_appended_before_is_committed(tmp_path):
    """While another thread ingests, an ingest call still returns only once every earlier append
    is in SQLite: a delivery mark can never reach a row before the row exists."""
    import threading

    spool = Spool(str(tmp_path / "s.db"))
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            for _ in range(50):
                spool.append(event(), "t", Priority.CRITICAL)
            spool.ingest()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(300):
            appended = spool.last_seq
            spool.ingest()
            assert spool.committed_seq >= appended
    finally:
        stop.set()
        thread.join()
        spool.close()
