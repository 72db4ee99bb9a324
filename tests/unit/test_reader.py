"""The relay's cursor over the journals, without Kafka: reading, acknowledging out of order,
rewinding, damaged frames and missing records."""

from __future__ import annotations

import fcntl
import os
import time

import pytest

from openalgo_events.host.journal import JournalWriter
from openalgo_events.relay.reader import Reader
from openalgo_events.spool import LedgerEntry
from openalgo_events.spool import format as fmt
from openalgo_events.spool.directory import SpoolDirectory

META = ["id", "order_event", "alice", 3, 1.0, "2026-01-01T00:00:00Z", "openalgo", None]


@pytest.fixture
def spool(tmp_path):
    directory = SpoolDirectory(str(tmp_path / "s"))
    yield directory
    directory.close()


def read_all(reader: Reader, budget: int = 10_000):
    reader.scan(time.monotonic())
    out = []
    for writer in list(reader.writers.values()):
        out += [(writer, entry, value) for entry, value in
                reader.read(writer, budget, time.monotonic())]
    return out


def test_records_are_read_once_and_the_position_follows_acknowledgements(spool):
    """Read records come out in order and are not read twice; acknowledging out of order
    moves the acknowledged seq only over the contiguous done prefix."""
    journal = JournalWriter(spool)
    for i in range(5):
        journal.append(META, f"v{i}".encode())
    reader = Reader(spool, {})
    first = read_all(reader)
    assert [e.seq for _, e, _ in first] == [1, 2, 3, 4, 5]
    assert [v for _, _, v in first] == [b"v0", b"v1", b"v2", b"v3", b"v4"]
    assert read_all(reader) == []
    writer = first[0][0]
    for index in (1, 2, 4):
        reader.done(writer, first[index][1])
    assert writer.acked_seq == 0
    reader.done(writer, first[0][1])
    assert writer.acked_seq == 3 and writer.position()[2] == first[2][1].end
    journal.append(META, b"v5")
    assert [e.seq for _, e, _ in read_all(reader)] == [6]
    journal.close()


def test_a_rewind_resends_only_what_is_not_done(spool):
    """After a producer rebuild, reading resumes at the acknowledged position and skips the
    records acknowledged out of order meanwhile."""
    journal = JournalWriter(spool)
    for _ in range(6):
        journal.append(META, b"x")
    reader = Reader(spool, {})
    read = read_all(reader)
    writer = read[0][0]
    reader.done(writer, read[0][1])
    reader.done(writer, read[3][1])  # seq 4 done out of order
    reader.rewind()
    assert [e.seq for _, e, _ in read_all(reader)] == [2, 3, 5, 6]
    journal.close()


def test_a_restart_resumes_at_the_ledger_position(spool):
    """A new reader given a writer's ledger entry reads only what comes after it."""
    journal = JournalWriter(spool)
    for _ in range(4):
        journal.append(META, b"x")
    reader = Reader(spool, {})
    read = read_all(reader)
    writer = read[0][0]
    for _, entry, _ in read[:2]:
        reader.done(writer, entry)
    ledger = {writer.name: LedgerEntry(*writer.position())}
    assert [e.seq for _, e, _ in read_all(Reader(spool, ledger))] == [3, 4]
    journal.close()


def test_records_written_again_after_a_repair_are_not_sent_twice(spool):
    """A writer that repaired damage writes records again with their old seq: those already
    acknowledged or in flight are skipped."""
    journal = JournalWriter(spool, segment_bytes=4096)
    for _ in range(10):
        journal.append(META, b"x" * 50)
    reader = Reader(spool, {})
    read = read_all(reader)
    writer = read[0][0]
    for _, entry, _ in read[:4]:
        reader.done(writer, entry)
    directory = os.path.join(spool.path, fmt.WRITERS, journal.name)
    os.unlink(os.path.join(directory, "1.seg"))
    assert journal.check(lambda: 4)
    assert read_all(reader) == []  # 5..10 were in flight already
    reader.rewind()  # a rebuild: now they are sent again, from the new segment
    assert sorted(e.seq for _, e, _ in read_all(reader)) == [5, 6, 7, 8, 9, 10]
    journal.close()


def test_a_corrupt_frame_loses_only_itself_once_the_writer_moved_on(spool, caplog):
    """A bad frame in a sealed segment is set aside (counted, logged with its position) and
    every other record of every writer flows."""
    journal = JournalWriter(spool, segment_bytes=4096)
    other = JournalWriter(spool)
    for _ in range(3):
        journal.append(META, b"y" * 40)
    directory = os.path.join(spool.path, fmt.WRITERS, journal.name)
    with open(os.path.join(directory, "1.seg"), "r+b") as handle:
        data = handle.read()
        second = fmt.frame_at(data, 0)[0]
        handle.seek(second + 20)
        handle.write(b"\xff\xff")
    for _ in range(60):  # on into segment 2: segment 1 is sealed
        journal.append(META, b"y" * 40)
    other.append(META, b"z")
    reader = Reader(spool, {})
    seqs = {}
    for writer, entry, _ in read_all(reader):
        seqs.setdefault(writer.name, []).append(entry.seq)
    assert seqs[journal.name] == [1, *range(3, 64)]
    assert seqs[other.name] == [1]
    assert reader.corrupt == 1 and "corrupt frame" in caplog.text and "segment 1" in caplog.text
    journal.close()
    other.close()


def test_a_live_writers_bad_last_frame_is_awaited_then_passed_over(spool, monkeypatch):
    """A bad frame at a live writer's end may be being written: the reader waits, and passes
    over it only after CORRUPT_AFTER."""
    journal = JournalWriter(spool)
    journal.append(META, b"ok")
    directory = os.path.join(spool.path, fmt.WRITERS, journal.name)
    with open(os.path.join(directory, "1.seg"), "r+b") as handle:
        end = fmt.frame_at(handle.read(), 0)[0]
        handle.seek(end)
        handle.write(fmt.HEADER.pack(10, 1234) + b"[garbage!]")
    reader = Reader(spool, {})
    assert [e.seq for _, e, _ in read_all(reader)] == [1]
    assert reader.corrupt == 0
    monkeypatch.setattr(fmt, "CORRUPT_AFTER", 0.0)
    read_all(reader)
    assert reader.corrupt == 1
    journal.close()


def test_a_hole_no_repair_fills_is_reported_lost_and_passed(spool, caplog):
    """Records missing from a dead writer's journal (a segment deleted before they were read):
    reported lost, and the acknowledged seq moves past them."""
    journal = JournalWriter(spool, segment_bytes=4096)
    for _ in range(80):
        journal.append(META, b"y" * 40)
    name = journal.name
    journal.close()  # dead
    os.unlink(os.path.join(spool.path, fmt.WRITERS, name, "2.seg"))
    reader = Reader(spool, {})
    read = read_all(reader)
    writer = reader.writers[name]
    for _, entry, _ in read:
        reader.done(writer, entry)
    assert writer.acked_seq < 80 and not writer.live
    reader.settle_gaps(time.monotonic())
    assert writer.acked_seq == 80 and writer.lost > 0 and "are missing" in caplog.text
    assert reader.drained(writer)


def test_a_writer_is_alive_while_its_lock_is_held(spool):
    """Liveness is the writer's flock: held while it runs, free once it closed or died."""
    journal = JournalWriter(spool)
    journal.append(META, b"x")
    reader = Reader(spool, {})
    reader.scan(time.monotonic())
    assert reader.writers[journal.name].live
    journal.close()
    reader.scan(time.monotonic())
    assert not reader.writers[journal.name].live
    lock = os.path.join(spool.path, fmt.WRITERS, journal.name, fmt.WRITER_LOCK)
    fd = os.open(lock, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    reader.scan(time.monotonic())
    assert reader.writers[journal.name].live
    os.close(fd)
