"""An event journaled while the relay goes idle is never left without a relay: the publisher
writes its first event before it looks for a relay, and a keeper whose relay exited idle looks
for events once more after letting go of the spool (so one of the two sees the other)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from openalgo_events import KafkaEventPublisher, Settings
from openalgo_events.host.starter import Starter
from openalgo_events.relay.keeper import Keeper
from openalgo_events.spool import Spool
from openalgo_events.spool import format as fmt
from openalgo_events.spool.directory import SpoolDirectory, posix_lock


def publisher(path: str) -> KafkaEventPublisher:
    return KafkaEventPublisher("127.0.0.1:1", "orders",
                               settings=Settings.from_env({"KAFKA_SPOOL_PATH": path}))


def test_the_first_publish_looks_for_a_relay_after_its_event_is_journaled(tmp_path, monkeypatch):
    path = str(tmp_path / "spool")
    seen: list[int] = []

    def ensure(self: Starter) -> bool:  # what a keeper exiting at this instant would find
        with Spool(path) as spool:
            seen.append(spool.pending().depth)
        return True

    monkeypatch.setattr(Starter, "ensure", ensure)
    p = publisher(path)
    try:
        p.publish_order_event("alice", "SBIN", "BUY", "1", "live")
    finally:
        p.close(1)
    assert seen and seen[0] == 1, seen


def locked(spool: SpoolDirectory) -> int:
    fd = spool.open(fmt.KEEPER_LOCK, os.O_RDWR, create=True)
    assert posix_lock(fd)
    return fd


# Another process on the keeper's lock (POSIX record locks never conflict within a process):
# it tries the lock, says whether it got it, and holds it until its stdin closes.
OTHER_KEEPER = r"""
import os, sys
from openalgo_events.spool import format as fmt
from openalgo_events.spool.directory import SpoolDirectory, posix_lock
spool = SpoolDirectory(sys.argv[1], create=False)
fd = spool.open(fmt.KEEPER_LOCK, os.O_RDWR)
print("locked" if posix_lock(fd) else "held", flush=True)
sys.stdin.read()
"""


def other_keeper(path: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", OTHER_KEEPER, path], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def done(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    proc.wait(10)
    proc.stdout.close()


@pytest.mark.parametrize("waiting", [True, False])
def test_a_keeper_whose_relay_went_idle_keeps_the_spool_only_when_events_wait(tmp_path,
                                                                          monkeypatch, waiting):
    monkeypatch.setattr(Starter, "ensure", lambda self: True)  # no keeper of the publisher's
    path = str(tmp_path / "spool")
    p = publisher(path)
    if waiting:
        p.publish_order_event("alice", "SBIN", "BUY", "1", "live")
    p.close(1)
    spool = SpoolDirectory(path, create=True)
    try:
        fd = Keeper._hand_over(spool, locked(spool))
        assert (fd is not None) is waiting
        other, said = other_keeper(path)  # a publisher's keeper starting now
        done(other)
        assert said == ("held" if waiting else "locked")
        if fd is not None:
            os.close(fd)
    finally:
        spool.close()


def test_a_keeper_leaves_the_spool_to_one_a_publisher_started_meanwhile(tmp_path, monkeypatch):
    """Events wait, but another keeper took the lock after this one let go: that one runs the
    relay, this one exits."""
    monkeypatch.setattr(Starter, "ensure", lambda self: True)
    path = str(tmp_path / "spool")
    p = publisher(path)
    p.publish_order_event("alice", "SBIN", "BUY", "1", "live")
    p.close(1)
    spool = SpoolDirectory(path, create=True)
    ours = locked(spool)
    real_close = os.close
    others: list[subprocess.Popen[str]] = []
    said: list[str] = []

    def close_then_taken(fd: int) -> None:  # the other keeper starts right after ours lets go
        real_close(fd)
        if fd == ours and not said:
            said.append("starting")  # Popen closes descriptors too
            proc, answer = other_keeper(path)
            others.append(proc)
            said.append(answer)

    monkeypatch.setattr(os, "close", close_then_taken)
    try:
        assert Keeper._hand_over(spool, ours) is None
        assert said == ["starting", "locked"]
    finally:
        monkeypatch.undo()
        for proc in others:
            done(proc)
        spool.close()
