"""The journal and the relay's cursor against a model (hypothesis's stateful testing).

Random sequences of appends from several writers, relay reads, acknowledgements and refusals
in any order, producer rebuilds, ledger writes, relay and writer crashes, segments deleted or
truncated under live writers and trail pruning, checked after every step against a model of
what was accepted and delivered:

- nothing accepted is lost: at any point, reading and acknowledging until nothing is left
  delivers (or sets aside) every accepted record;
- nothing is delivered twice, except a record delivered after the last ledger write before a
  relay crash (resent from the ledger's position: at-least-once);
- one writer's records are first sent in the order they were written (until it repairs
  damage, which writes old records again after newer ones);
- the trail holds no more than its bound once pruned, and never a pending record.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from openalgo_events.host.journal import JournalWriter
from openalgo_events.relay import trail
from openalgo_events.relay.reader import Reader
from openalgo_events.spool import LedgerEntry, Spool
from openalgo_events.spool import format as fmt
from openalgo_events.spool.directory import SpoolDirectory

SEGMENT = 1024  # small segments: rotations, seals and prunes happen in a few steps
TRAIL_MAX = 4096


class JournalModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = tempfile.mkdtemp(prefix="log-model-")
        self.spool = SpoolDirectory(os.path.join(self.root, "s"))
        self.writers: list[JournalWriter | None] = [None, None, None]
        self.accepted: dict[bytes, tuple[str, int]] = {}  # value -> (writer, seq)
        self.delivered: dict[bytes, int] = {}  # value -> times delivered
        self.rejected: set[bytes] = set()
        self.may_repeat: set[bytes] = set()
        self.first_sent: dict[str, list[int]] = {}
        self.repaired: set[str] = set()
        self.ledger: dict[str, LedgerEntry] = {}
        self.reader = Reader(self.spool, {})
        self.in_flight: list[tuple[object, object, bytes]] = []
        self.counter = 0
        self._segment_seqs: dict[tuple[str, int], set[int]] = {}

    def teardown(self) -> None:
        for journal in self.writers:
            if journal is not None:
                journal.close()
        self.reader.close()
        self.spool.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- the app's side -------------------------------------------------------------------------
    @rule(index=st.integers(0, 2), size=st.integers(0, 300))
    def append(self, index: int, size: int) -> None:
        journal = self.writers[index]
        if journal is None:
            journal = self.writers[index] = JournalWriter(self.spool, segment_bytes=SEGMENT)
        self.counter += 1
        value = f"{self.counter:08d}".encode() + b"p" * size
        seq = journal.append(["id", "t", "u", 3, time.time(), "ts", "src", None], value)
        self.accepted[value] = (journal.name, seq)

    @rule(index=st.integers(0, 2), fault=st.sampled_from([
        "dies", "current deleted", "current truncated", "sealed deleted", "sealed truncated",
        "directory deleted"]))
    def writer_fault(self, index: int, fault: str) -> None:
        """The writer dies (kill -9: its lock goes, its files stay), or one of its files is
        damaged under it and it repairs what it can (its watch looks about once a second)."""
        journal = self.writers[index]
        if journal is None:
            return
        if fault == "dies":
            journal.close()
            self.writers[index] = None
            return
        directory = os.path.join(self.spool.path, fmt.WRITERS, journal.name)
        segments = sorted(n for n in map(fmt.segment_number, os.listdir(directory))
                           if n is not None)
        which, how = fault.split()
        self._note_segments()  # what each segment holds before the damage
        if which == "directory":
            shutil.rmtree(directory)
        else:
            if which == "sealed" and len(segments) < 2:
                return
            number = segments[-1] if which == "current" else segments[-2]
            path = os.path.join(directory, fmt.segment_name(number))
            if how == "deleted":
                os.unlink(path)
            else:
                os.truncate(path, 0)
            if which == "sealed" and how == "truncated":
                # Not rebuilt from memory: the records the relay had not read are lost (and
                # reported by it), so the model stops counting on them.
                for value, (name, seq) in list(self.accepted.items()):
                    if name == journal.name and self._in_segment(seq, name, number) and (
                            seq > self._acked(name)):
                        self.accepted.pop(value)
        acked = self._acked(journal.name)
        if journal.check(lambda: acked):
            self.repaired.add(journal.name)

    def _in_segment(self, seq: int, name: str, number: int) -> bool:
        return seq in self._segment_seqs.get((name, number), set())

    # -- the relay's side ------------------------------------------------------------------------
    @rule(budget=st.integers(0, 20), mask=st.integers(0, 2**24), refuse=st.integers(0, 2**24),
          rebuild=st.booleans())
    def relay_turn(self, budget: int, mask: int, refuse: int, rebuild: bool) -> None:
        """One turn of the relay: read up to ``budget`` new records of each writer (they go in
        flight); reports come for some of what is in flight, in any order (bits of ``mask``;
        the oldest is mostly left out: reports overtaking it are the case worth testing),
        those whose bit of ``refuse`` is set refused for good (set aside), the others
        delivered; then maybe the producer is rebuilt: what is still in flight is dropped, not
        delivered, and the reader rewinds."""
        self._note_segments()
        self.reader.scan(time.monotonic())
        for writer in list(self.reader.writers.values()):
            for entry, value in self.reader.read(writer, budget, time.monotonic()):
                self.in_flight.append((writer, entry, value))
                sent = self.first_sent.setdefault(writer.name, [])
                if entry.seq not in sent:
                    sent.append(entry.seq)
        if mask % 4:
            mask &= ~1
        keep = []
        for index, (writer, entry, value) in enumerate(self.in_flight):
            if not mask >> (index % 24) & 1:
                keep.append((writer, entry, value))
                continue
            if refuse >> (index % 24) & 1 and refuse % 5 == 0:
                self.rejected.add(value)
            else:
                self.delivered[value] = self.delivered.get(value, 0) + 1
            self.reader.done(writer, entry)  # type: ignore[arg-type]
        self.in_flight = keep
        if rebuild:
            self.in_flight.clear()
            self.reader.rewind()

    @rule()
    def write_ledger(self) -> None:
        """The relay writes its ledger, and prunes the trail as it does now and then."""
        self.ledger = {name: LedgerEntry(*pos) for name, pos in self.reader.positions().items()}
        trail.prune(self.spool, self.ledger, 3600.0, TRAIL_MAX)
        assert Spool.of(self.spool).trail_size()[0] <= TRAIL_MAX

    @rule()
    def relay_crashes(self) -> None:
        """kill -9 of the relay: it restarts from the last ledger written. What it delivered
        since may be delivered again."""
        for value, (name, seq) in self.accepted.items():
            entry = self.ledger.get(name)
            if value in self.delivered and (entry is None or seq > entry.acked_seq):
                self.may_repeat.add(value)
        self.in_flight.clear()
        self.reader.close()
        self.reader = Reader(self.spool, self.ledger)

    # -- invariants ------------------------------------------------------------------------------
    @invariant()
    def nothing_delivered_twice_without_a_crash(self) -> None:
        twice = [v for v, n in self.delivered.items() if n > 1 and v not in self.may_repeat]
        assert not twice, f"delivered twice: {twice[:3]}"

    @invariant()
    def writers_first_send_in_order(self) -> None:
        for name, sent in self.first_sent.items():
            if name not in self.repaired:
                assert sent == sorted(sent), (name, sent)

    @invariant()
    def nothing_accepted_is_lost(self) -> None:
        """Drain a copy of the relay's state: read and deliver until nothing is left."""
        self._note_segments()
        reader = Reader(self.spool, {name: LedgerEntry(*pos) for name, pos
                                     in self.reader.positions().items()})
        reached = set(self.delivered) | self.rejected
        # what the live relay has in flight is reached too once its reports come
        reached |= {value for _, _, value in self.in_flight}
        for _ in range(1000):
            reader.scan(time.monotonic())
            got = 0
            for writer in list(reader.writers.values()):
                for entry, value in reader.read(writer, 10_000, time.monotonic()):
                    reached.add(value)
                    reader.done(writer, entry)
                    got += 1
            if not got:
                break
        reader.close()
        missing = [v[:8] for v in self.accepted if v not in reached]
        assert not missing, f"accepted and never delivered: {missing[:5]}"

    def _acked(self, name: str) -> int:
        writer = self.reader.writers.get(name)
        return writer.acked_seq if writer is not None else 0

    def _note_segments(self) -> None:
        """Which seqs each segment holds (to know what a truncation takes away)."""
        found = {}
        base = os.path.join(self.spool.path, fmt.WRITERS)
        for name in os.listdir(base) if os.path.isdir(base) else []:
            directory = os.path.join(base, name)
            if name.startswith(".") or not os.path.isdir(directory):
                continue
            for segment in os.listdir(directory):
                number = fmt.segment_number(segment)
                if number is None:
                    continue
                with open(os.path.join(directory, segment), "rb") as handle:
                    data = handle.read()
                found[(name, number)] = {fmt.decode(p)[0][0] for _, _, p in fmt.frames(data)}
        self._segment_seqs = found



JournalModel.TestCase.settings = settings(
    max_examples=200, stateful_step_count=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestJournalModel = JournalModel.TestCase
