"""The relay's cursor over every writer's journal: one log, one cursor.

The journals (``spool.format``) are the only store of pending events. For each writer the
reader keeps a read position and an acknowledged one: records are read, handed to the producer,
and the acknowledged position moves over the contiguous run of records that are done (delivered,
or set aside as rejected or shed) as delivery reports come back. The ledger persists each
writer's acknowledged position; after a restart, or a producer rebuild, reading resumes there.
Memory is bounded by the records in flight, never by the backlog: a backlog is read as it is
sent.

Two positions because acknowledgements come back out of order (one user's records share a
partition, different users' do not): ``acked_segment``/``acked_offset`` is the end of the done
prefix in file order (where to resume reading), ``acked_seq`` the largest seq below which every
record is done (what a writer's ``flush`` waits for; records at or below it are skipped when
read again). Records done out of order are remembered (``done_above``), so a rebuild resends
only what is really unacknowledged. A writer that repaired damage writes records again with
their old seq: those are skipped the same way.

A frame whose CRC or content is bad is set aside: counted, logged with its position, and
passed over (a live writer's last frame waits ``CORRUPT_AFTER`` seconds first: it may be
being written). A gap in a writer's seqs that no repair fills (a sealed segment truncated
before it was read) is reported as lost once it is old, so nothing waits for it forever.
"""

from __future__ import annotations

import contextlib
import logging
import os
import zlib
from collections import deque
from typing import Any

from ..errors import SpoolError
from ..spool import LedgerEntry
from ..spool import format as fmt
from ..spool.directory import SpoolDirectory, flock_held

log = logging.getLogger("openalgo_events.relay")

CHUNK = 256 * 1024  # bytes read from a segment at a time, at most (a backlog)
FIRST_CHUNK = 4096  # at least: a live writer's few new records (segments are zero-filled to
# SEGMENT_BYTES, so a fixed 256 KiB read would copy mostly zeros on every doorbell ring)
GAP_AFTER = 5.0  # seconds a hole in a writer's seqs may wait for a repair to fill it


class Entry:
    """One record read: where it ends (for the acknowledged position) and whether it is done."""

    __slots__ = ("done", "end", "meta", "segment", "seq", "start")

    meta: Any  # the frame's metadata (``spool.format``); None for what is not sent

    def __init__(self, seq: int, segment: int, start: int, end: int, meta: Any,
                 done: bool) -> None:
        self.seq, self.segment, self.start, self.end = seq, segment, start, end
        self.meta, self.done = meta, done


class Writer:
    """What the relay knows of one writer's journal."""

    def __init__(self, name: str, entry: LedgerEntry) -> None:
        self.name = name
        self.acked_seq: int = entry.acked_seq
        self.acked_segment: int = entry.segment
        self.acked_offset: int = entry.offset
        self.rejected: int = entry.rejected
        self.shed: int = entry.shed
        self.segment, self.offset = self.acked_segment, self.acked_offset
        self.directory: SpoolDirectory | None = None
        self.fd = -1
        self.size = 0
        self.window: deque[Entry] = deque()  # read, in file order, until the prefix is done
        self.done_above: set[int] = set()  # done seqs past acked_seq
        self.sending: set[int] = set()  # seqs in flight
        self.max_seq = self.acked_seq
        self.live = True
        self.caught_up = False
        self.bad_since: float | None = None
        self.gap_since: float | None = None
        self.corrupt = 0
        self.lost = 0
        self.gone_since: float | None = None
        self.chunk = FIRST_CHUNK  # bytes to read at a time: grows with a backlog, shrinks after

    def position(self) -> list[int]:
        return [self.acked_seq, self.acked_segment, self.acked_offset, self.rejected, self.shed]

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        if self.directory is not None:
            self.directory.close()
            self.directory = None


class Reader:
    """Reads every writer of one spool (``writers/``), from the ledger's positions."""

    def __init__(self, spool: SpoolDirectory, ledger: dict[str, LedgerEntry]) -> None:
        self.spool = spool
        self._ledger = dict(ledger)
        self.writers: dict[str, Writer] = {}
        self.corrupt = 0  # frames set aside, every writer
        self.lost = 0  # records reported lost, every writer
        self._writers_dir: SpoolDirectory | None = None

    # -- writers --------------------------------------------------------------------------------
    def scan(self, now: float) -> None:
        """Find new writers and vanished ones, and which are alive (their lock held)."""
        parent = self._parent()
        names = {n for n in (parent.listdir() if parent else []) if not n.startswith(".")}
        for name in names - set(self.writers):
            self.writers[name] = Writer(name, self._ledger.pop(
                name, LedgerEntry(0, 0, 0, 0, 0)))
        for name, writer in self.writers.items():
            if name not in names:
                if writer.gone_since is None:
                    writer.gone_since = now
                    writer.close()
                    log.warning("relay: writer directory %s disappeared; its acknowledged "
                                "position is kept for an hour in case it comes back", name)
                continue
            if writer.gone_since is not None:  # made again by a writer that repaired damage
                writer.gone_since = None
                writer.segment, writer.offset = writer.acked_segment, writer.acked_offset
            writer.live = parent is not None and flock_held(parent, f"{name}/{fmt.WRITER_LOCK}")

    def forget_gone(self, now: float, after: float = 3600.0) -> list[str]:
        """Drop writers whose directory has been gone for ``after`` seconds; their names."""
        gone = [n for n, w in self.writers.items()
                if w.gone_since is not None and now - w.gone_since > after]
        for name in gone:
            self.writers.pop(name).close()
        return gone

    def _parent(self) -> SpoolDirectory | None:
        if self._writers_dir is None or self._writers_dir.gone():
            if self._writers_dir is not None:
                self._writers_dir.close()
            try:
                self._writers_dir = SpoolDirectory.at(self.spool, fmt.WRITERS)
            except SpoolError:
                self._writers_dir = None
        return self._writers_dir

    # -- reading --------------------------------------------------------------------------------
    def read(self, writer: Writer, budget: int, now: float) -> list[tuple[Entry, bytes]]:
        """Up to ``budget`` records of ``writer`` to send, in file order (each already in the
        writer's window and ``sending``). Records already done are skipped (still windowed, so
        the acknowledged position passes them)."""
        out: list[tuple[Entry, bytes]] = []
        while len(out) < budget:
            if writer.fd < 0 and not self._open(writer):
                writer.caught_up = True
                return out
            state = self._read_segment(writer, budget, now, out)
            if state == "more":
                continue
            if state == "wait":
                writer.caught_up = True
                return out
            # the end of what is written in this segment: on to the next, if there is one
            later = self._later_segment(writer)
            if later is None:
                writer.caught_up = True
                return out
            self._final_pass(writer, budget, out)  # anything written before the next began
            if len(out) >= budget:
                return out
            writer.window.append(Entry(0, later, 0, 0, None, True))
            writer.close()
            writer.segment, writer.offset = later, 0
        writer.caught_up = False
        return out

    def _open(self, writer: Writer) -> bool:
        """Open the segment to read: ``writer.segment``, or the first one after it (segments
        before the acknowledged position may be pruned or gone)."""
        parent = self._parent()
        if parent is None or writer.gone_since is not None:
            return False
        if writer.directory is None:
            try:
                writer.directory = SpoolDirectory.at(parent, writer.name, create=False)
            except SpoolError:
                return False
        numbers = sorted(n for n in map(fmt.segment_number, writer.directory.listdir())
                         if n is not None and n >= writer.segment)
        if not numbers:
            return False
        if numbers[0] != writer.segment:
            writer.segment, writer.offset = numbers[0], 0
        try:
            writer.fd = writer.directory.open(fmt.segment_name(writer.segment), os.O_RDONLY)
        except (OSError, SpoolError):
            return False
        writer.size = os.fstat(writer.fd).st_size
        return True

    def _later_segment(self, writer: Writer) -> int | None:
        """The next segment after the one being read, once the writer has made one."""
        if writer.directory is None:
            return None
        later = [n for n in map(fmt.segment_number, writer.directory.listdir())
                 if n is not None and n > writer.segment]
        return min(later) if later else None

    def _read_segment(self, writer: Writer, budget: int, now: float,
                      out: list[tuple[Entry, bytes]]) -> str:
        """Read frames from the position: "more" (budget used, or a bad frame passed over),
        "end" (nothing more written here), "wait" (a bad frame that may be being written)."""
        base, want = writer.offset, writer.chunk
        data = os.pread(writer.fd, want, base)
        pos = 0
        header = fmt.HEADER
        while len(out) < budget:
            if pos + header.size > len(data):
                if len(data) < want:  # the file's end (a truncated segment ends early)
                    writer.offset = base + pos
                    return "end"
                # more than a chunk written since the last read: read bigger from now on
                writer.chunk = want = min(CHUNK, want * 4)
                base, pos = base + pos, 0
                data = os.pread(writer.fd, want, base)
                continue
            length, crc = header.unpack_from(data, pos)
            if length == 0:
                writer.offset = base + pos
                if pos < want // 8:  # a small read would have done: start smaller next time
                    writer.chunk = max(FIRST_CHUNK, want // 4)
                return "end"
            end = pos + header.size + length
            if end > len(data):
                if base + end > os.fstat(writer.fd).st_size:  # past the file: not a frame
                    writer.offset = base + pos
                    return self._bad(writer, now)
                base, pos, want = base + pos, 0, max(CHUNK, header.size + length)
                data = os.pread(writer.fd, want, base)  # the chunk cut it: read it whole
                continue
            payload = data[pos + header.size:end]
            if zlib.crc32(payload) != crc:
                writer.offset = base + pos
                return self._bad(writer, now)
            writer.bad_since = None
            self._record(writer, payload, base + pos, base + end, out)
            pos = end
        writer.offset = base + pos
        return "more"

    def _final_pass(self, writer: Writer, budget: int, out: list[tuple[Entry, bytes]]) -> None:
        """The segment is sealed (a later one exists): read what is left of it once more,
        resynchronising past holes (a truncated segment the writer extended, a bad block)."""
        size = os.fstat(writer.fd).st_size
        rest = os.pread(writer.fd, max(0, size - writer.offset), writer.offset)
        skipped_from = 0
        for start, end, payload in fmt.frames(rest):
            if start > skipped_from and rest[skipped_from:start].strip(b"\0"):
                self._count_corrupt(writer, writer.offset + skipped_from)
            self._record(writer, payload, writer.offset + start, writer.offset + end, out)
            skipped_from = end
        writer.offset += len(rest)

    def _record(self, writer: Writer, payload: bytes, start: int, end: int,
                out: list[tuple[Entry, bytes]]) -> None:
        try:
            meta, value = fmt.decode(payload)
        except ValueError:  # orjson's errors are ValueErrors too
            self._count_corrupt(writer, start, unreadable=True)
            writer.window.append(Entry(0, writer.segment, start, end, None, True))
            return
        seq = meta[fmt.SEQ]
        if seq > writer.max_seq:
            writer.max_seq = seq
        if seq <= writer.acked_seq or seq in writer.done_above or seq in writer.sending:
            writer.window.append(Entry(seq, writer.segment, start, end, None, True))
            return
        entry = Entry(seq, writer.segment, start, end, meta, False)
        writer.window.append(entry)
        writer.sending.add(seq)
        out.append((entry, value))

    def _bad(self, writer: Writer, now: float) -> str:
        """A frame that does not check out at the position: wait while a live writer may still
        be writing it, else pass over it to the next intact frame."""
        final = not writer.live or self._later_segment(writer) is not None
        if not final:
            if writer.bad_since is None:
                writer.bad_since = now
            if now - writer.bad_since < fmt.CORRUPT_AFTER:
                return "wait"
        writer.bad_since = None
        size = os.fstat(writer.fd).st_size
        rest = os.pread(writer.fd, max(0, size - writer.offset), writer.offset)
        resumed = fmt.resync(rest, 0)
        self._count_corrupt(writer, writer.offset)
        start = writer.offset
        writer.offset += len(rest) if resumed is None else resumed
        writer.window.append(Entry(0, writer.segment, start, writer.offset, None, True))
        return "more" if resumed is not None else "end"

    def _count_corrupt(self, writer: Writer, offset: int, unreadable: bool = False) -> None:
        writer.corrupt += 1
        self.corrupt += 1
        log.error("relay: %s frame in writer %s's journal, segment %s at offset %s; set aside "
                  "(%s so far for this writer), the records after it flow",
                  "an unreadable" if unreadable else "a corrupt", writer.name, writer.segment,
                  offset, writer.corrupt)

    def unread(self, writer: Writer, entry: Entry) -> None:
        """``entry`` and everything read after it could not be handed over (the producer's
        queue is full): read them again next time."""
        while writer.window:
            last = writer.window.pop()
            writer.sending.discard(last.seq)
            if last is entry:
                break
        writer.close()
        writer.segment, writer.offset = entry.segment, entry.start
        writer.caught_up = False

    # -- acknowledging --------------------------------------------------------------------------
    def done(self, writer: Writer, entry: Entry) -> None:
        """A record is delivered or set aside: move the acknowledged positions."""
        entry.done = True
        writer.sending.discard(entry.seq)
        if entry.seq > writer.acked_seq:
            writer.done_above.add(entry.seq)
        self.advance(writer)

    def advance(self, writer: Writer) -> bool:
        """Move the acknowledged positions over what is done; whether they moved."""
        moved = False
        window = writer.window
        while window and window[0].done:
            entry = window.popleft()
            writer.acked_segment, writer.acked_offset = entry.segment, entry.end
            moved = True
        done_above = writer.done_above
        while writer.acked_seq + 1 in done_above:
            done_above.remove(writer.acked_seq + 1)
            writer.acked_seq += 1
            moved = True
        return moved

    def rewind(self) -> None:
        """The producer was rebuilt: what was in flight is lost with it; read again from each
        writer's acknowledged position (records done since are skipped)."""
        for writer in self.writers.values():
            writer.window.clear()
            writer.sending.clear()
            writer.close()
            writer.segment, writer.offset = writer.acked_segment, writer.acked_offset
            writer.caught_up = False

    def settle_gaps(self, now: float) -> None:
        """Holes in a writer's seqs that nothing fills: a dead writer read to its end, or a hole
        older than ``GAP_AFTER`` with nothing in flight. Reported as lost, so that the
        acknowledged seq (what ``flush`` waits for) passes them."""
        for writer in self.writers.values():
            if writer.window or not writer.caught_up or not writer.done_above:
                writer.gap_since = None
                continue
            if writer.live:
                if writer.gap_since is None:
                    writer.gap_since = now
                if now - writer.gap_since < GAP_AFTER:
                    continue
            top = max(writer.done_above)
            missing = top - writer.acked_seq - len(writer.done_above)
            writer.lost += missing
            self.lost += missing
            log.error("relay: %s records of writer %s (seq %s to %s) are missing from its "
                      "journal (a segment deleted or truncated before they were read); they "
                      "are lost", missing, writer.name, writer.acked_seq + 1, top)
            writer.acked_seq = top
            writer.done_above.clear()
            writer.gap_since = None

    def projected(self, writer: Writer) -> list[int]:
        """The ledger entry ``writer`` will have once every record in flight is done (what a
        transaction commits with them, exactly-once)."""
        segment, offset = writer.acked_segment, writer.acked_offset
        sending = writer.sending
        for entry in writer.window:
            if not (entry.done or entry.seq in sending):
                break
            segment, offset = entry.segment, entry.end
        seq, done = writer.acked_seq, writer.done_above
        while seq + 1 in done or seq + 1 in sending:
            seq += 1
        return [seq, segment, offset, writer.rejected, writer.shed]

    def merge(self, remote: dict[str, list[int]]) -> None:
        """Positions committed in Kafka (exactly-once): where one is ahead of the ledger (a crash
        after a commit, before the ledger write), it wins. Called before anything is sent."""
        for name, entry in remote.items():
            found = LedgerEntry(*entry[:5])
            writer = self.writers.get(name)
            if writer is None:
                mine = self._ledger.get(name)
                if mine is None or found.acked_seq > mine.acked_seq:
                    self._ledger[name] = found
                continue
            if found.acked_seq > writer.acked_seq:
                writer.acked_seq, writer.acked_segment, writer.acked_offset = found[:3]
                writer.rejected, writer.shed = found.rejected, found.shed
                writer.close()
                writer.segment, writer.offset = found.segment, found.offset
                writer.window.clear()
                writer.done_above.clear()

    def drained(self, writer: Writer) -> bool:
        """Dead, read to its end, everything done: its directory may move to the trail."""
        return (not writer.live and writer.caught_up and not writer.window
                and not writer.done_above and writer.gone_since is None)

    def positions(self) -> dict[str, list[int]]:
        """The ledger's body for every writer known (gone ones included, for an hour)."""
        return {name: w.position() for name, w in self.writers.items()}

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        if self._writers_dir is not None:
            self._writers_dir.close()
