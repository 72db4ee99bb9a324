"""The host/relay hand-off format and the host writer, without a broker or a relay."""

from __future__ import annotations

import os

import pytest

from openalgo_events import KafkaEventPublisher, Settings, spooldir
from openalgo_events._journal import encode
from openalgo_events.errors import ConfigError, SpoolError


@pytest.fixture(autouse=True)
def no_relay(monkeypatch):
    monkeypatch.setenv("OPENALGO_EVENTS_RELAY_AUTOSTART", "FALSE")  # nothing to send to


def test_frames_stop_at_a_torn_frame_and_resync_finds_the_next():
    """frames_from stops at a bad CRC (a frame being written, or corrupt); resync returns the
    offset of the next intact frame after it."""
    good, bad, last = encode(b"[1]", b"a"), bytearray(encode(b"[2]", b"b")), encode(b"[3]", b"c")
    bad[-1] ^= 0xFF
    data = good + bytes(bad) + last + bytes(16)
    assert [payload for _, _, payload in spooldir.frames_from(data, 0)] == [b"[1]\na"]
    assert spooldir.resync(data, len(good)) == len(good) + len(bad)
    assert [p for _, _, p in spooldir.frames_from(data, len(good) + len(bad))] == [b"[3]\nc"]


def test_identity_mismatch_is_refused_with_the_fix(tmp_path):
    """A spool claimed for one cluster and topic refuses another, naming both and the way out."""
    spool = str(tmp_path / "s.db")
    spooldir.Identity("k1:9092", "orders").claim(spool)
    spooldir.Identity("k1:9092", "orders").claim(spool)  # the same again: fine
    with pytest.raises(ConfigError, match="k1:9092 topic orders, not k2:9092 topic orders"):
        spooldir.Identity("k2:9092", "orders").claim(spool)


def test_identity_is_the_same_cluster_whatever_the_order_of_the_bootstrap_list(tmp_path):
    """A restart listing the same brokers in another order, or with spaces, is the same cluster;
    a list with another broker is not."""
    spool = str(tmp_path / "s.db")
    spooldir.Identity("k1:9092,k2:9092", "orders").claim(spool)
    spooldir.Identity("k2:9092, k1:9092", "orders").claim(spool)
    with pytest.raises(ConfigError, match="not k1:9092,k3:9092 topic orders"):
        spooldir.Identity("k1:9092,k3:9092", "orders").claim(spool)


def test_identity_claim_replaces_a_torn_file_and_still_refuses_a_mismatch(tmp_path):
    """An empty identity file (a claimant killed between creating and writing it) does not stop
    a restart, is replaced by a whole one, and the check holds again after it."""
    spool = str(tmp_path / "s.db")
    with open(spooldir.identity_path(spool), "w"):
        pass
    spooldir.Identity("k1:9092", "orders").claim(spool)
    assert spooldir.read_json(spooldir.identity_path(spool)) == {
        "version": spooldir.VERSION, "bootstrap_servers": "k1:9092", "topic": "orders"}
    with pytest.raises(ConfigError, match="not k2:9092 topic orders"):
        spooldir.Identity("k2:9092", "orders").claim(spool)


def test_racing_identity_claims_let_exactly_one_identity_in(tmp_path):
    """Claimants of two identities racing on a fresh spool (hosts and a relay starting at
    once): every claimant of the winner's identity succeeds, every other one is refused, and
    no claimant sees a half-written file."""
    import threading

    for round_ in range(30):
        spool = str(tmp_path / f"s{round_}.db")
        start = threading.Barrier(8)
        outcome: dict[int, str] = {}

        def claim(i: int, spool: str = spool, start: threading.Barrier = start,
                  outcome: dict[int, str] = outcome) -> None:
            start.wait()
            try:
                spooldir.Identity(f"k{i % 2}:9092", "orders").claim(spool)
                outcome[i] = "ok"
            except ConfigError:
                outcome[i] = "refused"

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winner = spooldir.read_json(spooldir.identity_path(spool))
        assert winner is not None
        won = int(winner["bootstrap_servers"][1])
        assert outcome == {i: "ok" if i % 2 == won else "refused" for i in range(8)}


def test_each_process_journals_in_its_own_locked_directory(tmp_path):
    """The first publish creates <spool>.writers/<pid>-<start>/ holding a lock only this process
    holds, and the record in the format the relay reads."""
    spool = str(tmp_path / "s.db")
    publisher = KafkaEventPublisher("127.0.0.1:9", "orders",
                                    settings=Settings.from_env({"KAFKA_SPOOL_PATH": spool}))
    envelope = publisher.publish_order_event("alice", "SBIN", "BUY", "1", "live")
    [name] = os.listdir(spooldir.writers_dir(spool))
    writer = os.path.join(spooldir.writers_dir(spool), name)
    assert name.startswith(f"{os.getpid()}-")
    assert spooldir.locked(os.path.join(writer, "lock"))
    [segment] = spooldir.segments(writer)
    with open(segment, "rb") as handle:
        [(_, _, payload)] = list(spooldir.frames_from(handle.read(), 0))
    meta, _, value = payload.partition(b"\n")
    assert value == envelope.value and envelope.event_id.encode() in meta
    assert publisher.close() == 1  # no relay ran: one event not confirmed, still journaled
    assert not spooldir.locked(os.path.join(writer, "lock"))  # released: the relay may drain it


def test_unwritable_journal_raises_instead_of_accepting(tmp_path):
    """When the journal directory cannot be created (here a file is in its way; a read-only
    directory or a full disk fail the same call), publish raises SpoolError naming the fix:
    an event that was not written never looks accepted."""
    spool = str(tmp_path / "s.db")
    publisher = KafkaEventPublisher("127.0.0.1:9", "orders",
                                    settings=Settings.from_env({"KAFKA_SPOOL_PATH": spool}))
    with open(spooldir.writers_dir(spool), "w") as blocker:
        blocker.write("not a directory")
    envelope = publisher.build("order_event", "alice", {"symbol": "SBIN", "action": "BUY",
                                                        "orderid": "1", "mode": "live"})
    try:
        with pytest.raises(SpoolError, match="writable"):
            publisher.transport.publish(envelope)
        assert publisher.transport.journaled == 0
    finally:
        publisher.close()


def test_publisher_starts_one_relay_while_it_starts_and_another_once_it_died(tmp_path,
                                                                            monkeypatch):
    """While the relay a publisher started has not taken the spool's lock yet (a slow Python
    start), further publishes start no second relay (it would only log that the first holds
    the spool); once the relay was seen running and is gone, the next check starts one at once."""
    from openalgo_events.transports import relayed

    monkeypatch.setenv("OPENALGO_EVENTS_RELAY_AUTOSTART", "TRUE")
    monkeypatch.setattr(relayed, "CHECK_RELAY_EVERY", 0.0)  # check at every publish
    running = {"now": False}
    started: list[str] = []
    monkeypatch.setattr(spooldir, "relay_running", lambda _path: running["now"])
    monkeypatch.setattr(relayed, "start_detached", lambda _s, path: started.append(path))
    spool = str(tmp_path / "s.db")
    publisher = KafkaEventPublisher("127.0.0.1:9", "orders",
                                    settings=Settings.from_env({"KAFKA_SPOOL_PATH": spool}))
    try:
        for i in range(5):  # the relay is starting: not holding the lock yet
            publisher.publish_order_event("alice", "SBIN", "BUY", str(i), "live")
        assert started == [spool]
        running["now"] = True  # it took the lock
        publisher.publish_order_event("alice", "SBIN", "BUY", "5", "live")
        running["now"] = False  # and died (kill -9)
        publisher.publish_order_event("alice", "SBIN", "BUY", "6", "live")
        assert started == [spool, spool]
    finally:
        publisher.close()
