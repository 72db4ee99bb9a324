"""The durable spool, as everyone but its relay sees it: hosts, the CLI, health.

The format (``format``) is the contract; ``directory`` keeps it private; the app's side writes
journals (``host.journal``) and the relay's side reads them (``relay``). ``Spool`` reads the
rest: what is pending, what the relay acknowledged (the ledger), its status, the trail of
delivered events for replay, and the events set aside as rejected. It never takes a lock, so
it is safe while the app and the relay run.

>>> spool = Spool("openalgo_events_spool/from_openalgo_order_events-1a2b3c4d")  # doctest: +SKIP
>>> spool.pending().depth  # doctest: +SKIP
0
"""

from __future__ import annotations

import contextlib
import heapq
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import SpoolError
from . import format as fmt
from .directory import SpoolDirectory, lock_holder
from .rejected import RejectedEvent, RejectedStore

if TYPE_CHECKING:
    from ..config import Settings

REPLAY_HEADER = "openalgo_replay"


class LedgerEntry(NamedTuple):
    """A writer's acknowledged position (``format``: "Ledger and status")."""

    acked_seq: int
    segment: int
    offset: int
    rejected: int
    shed: int


@dataclass(frozen=True)
class Pending:
    """Events accepted into journals and not yet acknowledged by the relay."""

    depth: int
    bytes: int
    oldest_created: float | None  # unix seconds of the oldest one


class TrailRecord(NamedTuple):
    """One acknowledged record, as its journal holds it."""

    created: float
    meta: list[Any]
    value: bytes


class Spool:
    """An existing spool directory, read-only (``retry`` writes one mark in ``rejected.db``).

    Raises ``SpoolError`` when ``path`` is not a usable spool directory (absent, another
    user's, a version-1 spool file: the message says what to do).
    """

    def __init__(self, path: str) -> None:
        refuse_version_1(path)
        self.path = os.path.abspath(path)
        self.directory = SpoolDirectory(self.path, create=False)
        self._owned = True

    @classmethod
    def of(cls, directory: SpoolDirectory) -> Spool:
        """A view of a directory the caller opened (and closes)."""
        view = cls.__new__(cls)
        view.path, view.directory, view._owned = directory.path, directory, False
        return view

    # -- the relay ------------------------------------------------------------------------------
    def relay_pid(self) -> int | None:
        """The pid of the relay holding the spool, or None: read from the lock itself."""
        return lock_holder(self.directory, fmt.RELAY_LOCK)

    def keeper_pid(self) -> int | None:
        return lock_holder(self.directory, fmt.KEEPER_LOCK)

    def ledger(self) -> dict[str, LedgerEntry]:
        """Every writer's acknowledged position (empty before the relay's first write)."""
        body = _read_record(self.directory, fmt.LEDGER)
        writers = (body or {}).get("writers") or {}
        found = {}
        for name, entry in writers.items():
            with contextlib.suppress(TypeError, ValueError):
                found[name] = LedgerEntry(*(int(x) for x in entry[:5]))
        return found

    def status(self) -> dict[str, Any]:
        """The relay's last status (``relay.process``), or {} when it never wrote one."""
        return _read_record(self.directory, fmt.STATUS) or {}

    # -- pending events ---------------------------------------------------------------------------
    def pending(self, ledger: dict[str, LedgerEntry] | None = None) -> Pending:
        """What the writers journaled past their acknowledged positions. Cheap enough for
        health: per writer, its last segment is read for its last seq (seqs count up by one),
        and its first pending record for its age."""
        ledger = self.ledger() if ledger is None else ledger
        depth = size = 0
        oldest: float | None = None
        writers = _subdir(self.directory, fmt.WRITERS)
        if writers is None:
            return Pending(0, 0, None)
        try:
            for name in writers.listdir():
                if name.startswith("."):
                    continue
                head = _head(writers, name, ledger.get(name, LedgerEntry(0, 0, 0, 0, 0)))
                if head is not None:
                    depth += head.depth
                    size += head.bytes
                    if head.oldest_created is not None:
                        oldest = head.oldest_created if oldest is None else min(
                            oldest, head.oldest_created)
        finally:
            writers.close()
        return Pending(depth, size, oldest)

    def _writer_records(self, ledger: dict[str, LedgerEntry], *, pending: bool,
                        ) -> Iterator[tuple[str, Iterator[tuple[list[Any], bytes]]]]:
        """Each writer's records past (``pending``) or up to its acknowledged position."""
        writers = _subdir(self.directory, fmt.WRITERS)
        if writers is None:
            return
        for name in sorted(writers.listdir()):
            if not name.startswith("."):
                entry = ledger.get(name, LedgerEntry(0, 0, 0, 0, 0))
                yield name, _records(writers, name, entry, pending=pending)

    # -- the trail ------------------------------------------------------------------------------
    def trail(self, *, since: float = 0.0, until: float | None = None,
              user_id: str | None = None, event_types: Iterable[str] = ()) -> Iterator[TrailRecord]:
        """Acknowledged records created in ``[since, until]`` (unix seconds; up to now by
        default) of ``user_id`` (everyone when None) and ``event_types`` (all when empty),
        oldest first, streamed. Records set aside as rejected are left out."""
        import time

        until = time.time() if until is None else until
        types = set(event_types)
        refused = {event.event_id for event in self.rejected()}

        def wanted(meta: list[Any]) -> bool:
            return (since <= meta[fmt.CREATED] <= until
                    and (user_id is None or meta[fmt.USER_ID] == user_id)
                    and (not types or meta[fmt.EVENT_TYPE] in types)
                    and meta[fmt.EVENT_ID] not in refused)

        streams = [(TrailRecord(float(meta[fmt.CREATED]), meta, value)
                    for meta, value in records if wanted(meta))
                   for _name, records in self._trail_sources(since)]
        yield from heapq.merge(*streams, key=lambda record: record.created)

    def _trail_sources(self, since: float,
                       ) -> Iterator[tuple[str, Iterator[tuple[list[Any], bytes]]]]:
        ledger = self.ledger()
        yield from self._writer_records(ledger, pending=False)
        trail = _subdir(self.directory, fmt.TRAIL)
        if trail is None:
            return
        for name in sorted(trail.listdir()):
            yield name, _records(trail, name, None, pending=False, since=since)

    def trail_size(self) -> tuple[int, float | None]:
        """Bytes of disk the trail's segments take, and the mtime of the oldest."""
        total, oldest = 0, None
        for _directory, _name, st in trail_segments(self.directory, self.ledger()):
            total += st.st_blocks * 512
            oldest = st.st_mtime if oldest is None else min(oldest, st.st_mtime)
        return total, oldest

    # -- rejected events ------------------------------------------------------------------------
    def rejected(self, limit: int = 1000) -> list[RejectedEvent]:
        store = RejectedStore(self.directory, readonly=True)
        try:
            return store.list(limit)
        finally:
            store.close()

    def retry(self, event_id: str) -> int:
        """Mark rejected event ``event_id`` for sending again (the relay sends it within a
        second of running); how many rejected copies were marked (0: none has that id)."""
        if not self.directory.exists(fmt.REJECTED):
            return 0
        store = RejectedStore(self.directory)
        try:
            return store.mark_for_retry(event_id)
        finally:
            store.close()

    def close(self) -> None:
        if self._owned:
            self.directory.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def trail_segments(spool: SpoolDirectory, ledger: dict[str, LedgerEntry],
                   ) -> Iterator[tuple[SpoolDirectory, str, os.stat_result]]:
    """(directory, segment name, stat) of every trail segment: those of ``trail/`` and a live
    writer's segments wholly before its acknowledged position. The directory is open only
    until the next item."""
    for parent_name, whole in ((fmt.TRAIL, True), (fmt.WRITERS, False)):
        parent = _subdir(spool, parent_name)
        if parent is None:
            continue
        try:
            for name in sorted(parent.listdir()):
                if name.startswith("."):
                    continue
                directory = _subdir(parent, name)
                if directory is None:
                    continue
                try:
                    below = None if whole else ledger.get(name, LedgerEntry(0, 0, 0, 0, 0)).segment
                    for segment in _segment_names(directory):
                        number = fmt.segment_number(segment) or 0
                        if below is not None and number >= below:
                            continue
                        with contextlib.suppress(FileNotFoundError):
                            yield directory, segment, os.stat(segment, dir_fd=directory.fd,
                                                              follow_symlinks=False)
                finally:
                    directory.close()
        finally:
            parent.close()


def _records(parent: SpoolDirectory, name: str, entry: LedgerEntry | None, *, pending: bool,
             since: float = 0.0) -> Iterator[tuple[list[Any], bytes]]:
    """A journal's records, segment by segment: with ``pending``, those past ``entry``;
    otherwise those up to it (all of them when ``entry`` is None: a trail directory).

    Nothing stays open between segments (a replay merges many journals at once): each
    segment is opened, read, parsed and closed before its records are handed on.
    """
    directory = _subdir(parent, name)
    if directory is None:
        return
    try:
        names = _segment_names(directory)
    finally:
        directory.close()
    for segment in names:
        number = fmt.segment_number(segment) or 0
        if entry is not None and pending and number < entry.segment:
            continue
        data = _read_segment(parent, name, segment, since if not pending else 0.0)
        if data is None:
            continue
        start = entry.offset if entry is not None and pending and number == entry.segment else 0
        found = []
        for _start, _end, payload in fmt.frames(data, start):
            try:
                meta, value = fmt.decode(payload)
            except ValueError:
                continue
            done = entry is None or meta[fmt.SEQ] <= entry.acked_seq
            if done != pending:
                found.append((meta, value))
        del data
        yield from found


def _read_segment(parent: SpoolDirectory, name: str, segment: str,
                  newer_than: float) -> bytes | None:
    """A segment's bytes, or None when it is gone or its last write is before ``newer_than``
    (every record in it is older)."""
    directory = _subdir(parent, name)
    if directory is None:
        return None
    try:
        fd = directory.open(segment, os.O_RDONLY)
    except (OSError, SpoolError):
        return None
    finally:
        directory.close()
    try:
        st = os.fstat(fd)
        if st.st_mtime < newer_than:
            return None
        return os.pread(fd, st.st_size, 0)
    finally:
        os.close(fd)


def _head(writers: SpoolDirectory, name: str, entry: LedgerEntry) -> Pending | None:
    """One writer's pending records: its last seq less the acknowledged one; bytes from the
    acknowledged position to the end of what it wrote; the first pending record's age."""
    directory = _subdir(writers, name)
    if directory is None:
        return None
    try:
        names = [n for n in _segment_names(directory)
                 if (fmt.segment_number(n) or 0) >= entry.segment]
        if not names:
            return None
        sizes = {}
        for segment in names:
            with contextlib.suppress(FileNotFoundError):
                sizes[segment] = os.stat(segment, dir_fd=directory.fd,
                                         follow_symlinks=False).st_size
    finally:
        directory.close()
    last_seq = size = 0
    for index in range(len(names) - 1, -1, -1):  # the newest segment with a record
        end = 0
        for _start, stop, payload in fmt.frames(_read_segment(writers, name, names[index], 0.0)
                                                or b""):
            end = stop
            with contextlib.suppress(ValueError):
                last_seq = max(last_seq, fmt.decode(payload)[0][fmt.SEQ])
        if last_seq:
            size = sum(sizes.get(n, 0) for n in names[:index]) + end
            break
    depth = max(0, last_seq - entry.acked_seq)
    if not depth:
        return Pending(0, 0, None)
    oldest = None
    for meta, _value in _records(writers, name, entry, pending=True):
        oldest = float(meta[fmt.CREATED])
        break
    return Pending(depth, max(0, size - entry.offset), oldest)


def _segment_names(directory: SpoolDirectory) -> list[str]:
    names = [n for n in directory.listdir() if fmt.segment_number(n) is not None]
    return sorted(names, key=lambda n: fmt.segment_number(n) or 0)


def _subdir(parent: SpoolDirectory, name: str) -> SpoolDirectory | None:
    try:
        return SpoolDirectory.at(parent, name, create=False)
    except SpoolError:
        return None


def _read_record(directory: SpoolDirectory, name: str) -> dict[str, Any] | None:
    try:
        fd = directory.open(name, os.O_RDONLY)
    except (OSError, SpoolError):
        return None
    try:
        found = fmt.read_record(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    return found[1] if found else None


def open_directory(settings: Settings, *, create: bool = True) -> SpoolDirectory:
    """The spool directory ``settings`` name (``Settings.spool_location``), checked; the
    default's parent, ``openalgo_events_spool/``, is made private too. Raises ``SpoolError``."""
    path = settings.spool_location
    refuse_version_1(path)
    if not settings.spool_path and create:
        SpoolDirectory(os.path.dirname(path), create=True).close()
    return SpoolDirectory(path, create=create)


def refuse_version_1(path: str) -> None:
    """A path that is not a directory of its own: a version-1 spool (a SQLite file at
    ``KAFKA_SPOOL_PATH``) is told what to do with it; a link or any other file is refused
    (never followed)."""
    import stat

    try:
        found = os.lstat(path)
    except OSError:
        return
    if stat.S_ISDIR(found.st_mode):
        return
    if stat.S_ISLNK(found.st_mode):
        raise SpoolError(f"KAFKA_SPOOL_PATH={path} is a symbolic link, not a directory of its "
                         "own: a spool is never reached through a link (another user could "
                         "have planted it); remove it or set KAFKA_SPOOL_PATH to a directory path")
    head = b""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            head = os.read(fd, 16)
        finally:
            os.close(fd)
    if head == b"SQLite format 3\x00":
        raise SpoolError(
            f"KAFKA_SPOOL_PATH={path} is a version-1 spool file; this version keeps its spool "
            f"in a directory. Set KAFKA_SPOOL_PATH to a new directory path (or unset it), then "
            f"run 'openalgo-events spool import {path}' once: it moves the events still "
            "pending there into the new spool for its relay to send")
    raise SpoolError(f"KAFKA_SPOOL_PATH={path} is a file, not a spool directory; set it to a "
                     "directory path (created if absent) or unset it")


__all__ = ["REPLAY_HEADER", "LedgerEntry", "Pending", "RejectedEvent", "Spool", "TrailRecord"]
