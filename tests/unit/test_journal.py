"""The app's journal with real files and no relay: one locked journal per process, a full
disk, and every file of it deleted, replaced or truncated under a live writer
(docs/operations.md, "Storage faults")."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from openalgo_events import KafkaEventPublisher, Settings, SpoolError
from openalgo_events.host.journal import JournalWriter
from openalgo_events.spool import format as fmt
from openalgo_events.spool.directory import SpoolDirectory, flock_held
from tests.support import mounted_tmpfs

ROOT = os.geteuid() == 0
META = ["id", "order_event", "alice", 3, 1.0, "2026-01-01T00:00:00Z", "openalgo", None]


@pytest.fixture(autouse=True)
def no_relay(monkeypatch):
    monkeypatch.setenv("OPENALGO_EVENTS_RELAY_AUTOSTART", "FALSE")  # nothing to send to


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A directory on its own small tmpfs (3 MiB), unmounted at the end."""
    if not ROOT:
        pytest.skip("mounting a tmpfs needs root")
    with mounted_tmpfs(tmp_path / "disk", "3m") as mount:
        yield mount


def resize(mount: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)


def journaled_seqs(writer_dir: Path) -> set[int]:
    """Every seq found in a writer's segments (what a relay would read)."""
    found: set[int] = set()
    for segment in writer_dir.glob("*.seg"):
        for _start, _end, payload in fmt.frames(segment.read_bytes()):
            found.add(fmt.decode(payload)[0][fmt.SEQ])
    return found


def test_each_process_journals_in_its_own_locked_directory(tmp_path):
    """A writer's directory is named <pid>-<ns>, holds its lock for its whole life and its
    segments; the lock is free once it is closed."""
    spool = SpoolDirectory(str(tmp_path / "s"))
    journal = JournalWriter(spool)
    assert journal.name.startswith(f"{os.getpid()}-")
    assert journal.append(META, b"{}") == 1 and journal.append(META, b"{}") == 2
    writers = SpoolDirectory.at(spool, fmt.WRITERS)
    assert writers.listdir() == [journal.name]
    assert flock_held(writers, f"{journal.name}/{fmt.WRITER_LOCK}")
    assert journaled_seqs(tmp_path / "s" / fmt.WRITERS / journal.name) == {1, 2}
    journal.close()
    assert not flock_held(writers, f"{journal.name}/{fmt.WRITER_LOCK}")


def test_segments_roll_over_and_the_next_one_seals_the_previous(tmp_path):
    """Records past a segment's size go to the next segment, made only when needed."""
    spool = SpoolDirectory(str(tmp_path / "s"))
    journal = JournalWriter(spool, segment_bytes=4096)
    for _ in range(100):
        journal.append(META, b"x" * 100)
    directory = tmp_path / "s" / fmt.WRITERS / journal.name
    numbers = sorted(fmt.segment_number(p.name) for p in directory.glob("*.seg"))
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) > 3
    assert journaled_seqs(directory) == set(range(1, 101))
    journal.close()


def test_a_refused_publish_leaves_nothing_behind(tmpfs):
    """A disk without room for one segment refuses the publish with the path and the fix, and
    leaves no writer directory (a relay would count it as a writer and never go idle)."""
    resize(tmpfs, "512k")
    publisher = KafkaEventPublisher("127.0.0.1:9", "t", settings=Settings.from_env(
        {"KAFKA_SPOOL_PATH": str(tmpfs / "spool")}))
    for _ in range(3):
        with pytest.raises(SpoolError, match=r"cannot be created \(No space left on device\); "
                                             "free space on its volume"):
            publisher.publish_order_event("alice", "SBIN", "BUY", "1", "live")
    assert os.listdir(tmpfs / "spool" / fmt.WRITERS) == []
    resize(tmpfs, "8m")
    publisher.publish_order_event("alice", "SBIN", "BUY", "2", "live")
    assert len(os.listdir(tmpfs / "spool" / fmt.WRITERS)) == 1
    publisher.close()


# A publisher in its own process, so a SIGBUS would show as its death. It logs each event's
# outcome as the call returns, and exits like a kill -9 (nothing closed).
_PUBLISHER = textwrap.dedent("""
    import os, sys
    from openalgo_events import EventNotStoredError, KafkaEventPublisher, Settings
    spool, log, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.environ["OPENALGO_EVENTS_RELAY_AUTOSTART"] = "FALSE"
    publisher = KafkaEventPublisher("127.0.0.1:9", "t", settings=Settings.from_env(
        {"KAFKA_SPOOL_PATH": spool}))
    with open(log, "w", buffering=1) as out:
        for i in range(count):
            try:
                env = publisher.publish_order_event("alice", "SBIN", "BUY", str(i), "live",
                                                    pad="x" * 1000)
            except EventNotStoredError as exc:
                out.write("refused " + exc.event_id + "\\n")
                continue
            out.write("accepted " + env.event_id + "\\n")
    os._exit(0)
""")


def test_a_full_disk_refuses_events_and_never_kills_the_app(tmpfs, tmp_path):
    """On a disk that fills up, the publishing process never dies (no SIGBUS): each event is
    accepted or refused at the call, and every accepted one is in the journal."""
    log = tmp_path / "outcomes.txt"
    child = subprocess.run([sys.executable, "-c", _PUBLISHER, str(tmpfs / "spool"), str(log),
                            "5000"], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    lines = log.read_text().splitlines()
    accepted = [line.split()[1] for line in lines if line.startswith("accepted")]
    refused = [line.split()[1] for line in lines if line.startswith("refused")]
    assert accepted and refused and len(accepted) + len(refused) == 5000
    found = set()
    for segment in (tmpfs / "spool" / fmt.WRITERS).glob("*/*.seg"):
        for _s, _e, payload in fmt.frames(segment.read_bytes()):
            found.add(fmt.decode(payload)[0][fmt.EVENT_ID])
    assert set(accepted) <= found and not set(refused) & found


@pytest.mark.parametrize("damage", ["current deleted", "current truncated", "sealed deleted",
                                    "directory deleted", "writers deleted"])
def test_damage_under_a_live_writer_is_repaired_from_what_it_holds(tmp_path, damage, caplog):
    """A segment (current or sealed) deleted or truncated, or the writer's directory deleted:
    the next check writes every record not yet acknowledged again, so the journal still holds
    every seq the relay has not acknowledged, and publishing goes on."""
    spool = SpoolDirectory(str(tmp_path / "s"))
    journal = JournalWriter(spool, segment_bytes=8192)
    for _ in range(150):
        journal.append(META, b"y" * 100)
    writers = tmp_path / "s" / fmt.WRITERS
    directory = writers / journal.name
    segments = sorted(directory.glob("*.seg"), key=lambda p: fmt.segment_number(p.name))
    acked = 20  # what the relay acknowledged (the ledger's seq for this writer)
    if damage == "current deleted":
        segments[-1].unlink()
    elif damage == "current truncated":
        os.truncate(segments[-1], 100)
    elif damage == "sealed deleted":
        segments[1].unlink()
    elif damage == "directory deleted":
        import shutil

        shutil.rmtree(directory)
    else:
        import shutil

        shutil.rmtree(writers)
    assert journal.check(lambda: acked)
    journal.append(META, b"z")
    assert set(range(acked + 1, 152)) <= journaled_seqs(directory)
    assert "written again" in caplog.text
    assert not journal.check(lambda: acked)  # repaired: nothing more to do
    journal.close()


def test_a_sealed_segment_pruned_after_its_acknowledgement_is_no_damage(tmp_path, caplog):
    """The relay prunes segments it acknowledged: a writer whose own view of the ledger is
    older reads it again before calling that damage."""
    spool = SpoolDirectory(str(tmp_path / "s"))
    journal = JournalWriter(spool, segment_bytes=4096)
    for _ in range(100):
        journal.append(META, b"y" * 100)
    directory = tmp_path / "s" / fmt.WRITERS / journal.name
    first = directory / "1.seg"
    last_in_first = max(fmt.decode(p)[0][fmt.SEQ] for _, _, p in fmt.frames(first.read_bytes()))
    first.unlink()  # pruned by a relay that acknowledged it
    views = iter([0, last_in_first])  # stale, then fresh
    assert not journal.check(lambda: next(views))
    assert "damaged" not in caplog.text
    journal.close()


_TRUNCATED = textwrap.dedent("""
    import os, sys, time
    from openalgo_events import KafkaEventPublisher, Settings
    os.environ["OPENALGO_EVENTS_RELAY_AUTOSTART"] = "FALSE"
    publisher = KafkaEventPublisher("127.0.0.1:9", "t", settings=Settings.from_env(
        {"KAFKA_SPOOL_PATH": sys.argv[1]}))
    publisher.publish_order_event("alice", "SBIN", "BUY", "0", "live")
    print("ready", flush=True)
    sys.stdin.readline()  # the segment is truncated now
    for i in range(1, 2001):
        publisher.publish_order_event("alice", "SBIN", "BUY", str(i), "live", pad="p" * 200)
    print(publisher.transport._look(), flush=True)  # the watch's turn: repair
    print("alive", flush=True)
""")


def test_a_segment_truncated_under_the_app_never_kills_it(tmp_path):
    """A live journal segment truncated to nothing while the app publishes: the app lives on
    (no SIGBUS: it writes with pwrite), and its journal holds every record after the repair."""
    spool = tmp_path / "spool"
    child = subprocess.Popen([sys.executable, "-c", _TRUNCATED, str(spool)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline().strip() == "ready"
    (segment,) = (spool / fmt.WRITERS).glob("*/1.seg")
    os.truncate(segment, 0)
    child.stdin.write("go\n")
    child.stdin.flush()
    output = child.communicate(timeout=60)[0]
    assert child.returncode == 0 and output.split()[-1] == "alive", output
    assert journaled_seqs(segment.parent) == set(range(1, 2002))
