"""The spool's append-only journal: what makes ``publish`` durable at the cost of a memcpy.

Each record is framed and copied into the current segment, a file mapped into memory with
MAP_SHARED, before ``publish`` returns: the bytes are then in the kernel's page cache, so a
process crash (kill -9) loses nothing, and no system call (which would hand the GIL to another
thread) sits on the publish path. With ``fsync`` each record is also synced to disk (msync),
which survives a power loss. The relay later moves records into SQLite in batches; a segment is
deleted once everything in it is committed there. After a crash, ``recover`` hands back the
records of the segments left behind.

The next segment is mapped and its pages faulted in ahead of need (``prepare``, called after
each commit, off the publish path), so the copy on the publish path does not wait on the kernel
to allocate pages (a third of the journal's cost there otherwise).

Storage faults (docs/operations.md, "Storage faults"):

- A segment's disk blocks are reserved when it is created (``posix_fallocate``): a full disk is
  then an ENOSPC at creation, raised as ``SpoolError``, never a SIGBUS on a later write into
  the mapping (which would kill the whole process).
- A segment whose file was deleted (or replaced) while mapped is detected by ``check`` (its
  path no longer names the inode we hold open) and its records are written again into a new
  segment, so that a crash afterwards still finds them.
- ``decode`` skips a corrupt frame in the middle of a segment: it resynchronises on the next
  frame whose header and CRC are valid, and logs how many bytes it skipped.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import mmap
import os
import struct
import zlib
from collections.abc import Iterator
from typing import Any

from ._threads import new_lock
from .errors import SpoolError

log = logging.getLogger("openalgo_events.journal")

_HEADER = struct.Struct("<II")  # payload length, CRC-32 of the payload
SEGMENT_BYTES = 4 * 1024 * 1024  # mapped pages count in RSS: small segments, deleted once committed
_POPULATE_WRITE = 23  # madvise MADV_POPULATE_WRITE (Linux 5.14): fault every page in, writable


def encode(meta: bytes, value: bytes) -> bytes:
    """One frame: header, the metadata (a JSON array), a newline, the raw value."""
    payload = meta + b"\n" + value
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _frame_at(data: bytes, offset: int) -> int:
    """The length of the intact frame at ``offset`` (header included), or 0 if none is there."""
    if offset + _HEADER.size > len(data):
        return 0
    length, crc = _HEADER.unpack_from(data, offset)
    start = offset + _HEADER.size
    # Every payload starts with its metadata, a JSON array: a cheap test before the CRC.
    if length == 0 or start + length > len(data) or data[start] != 0x5B:  # "["
        return 0
    if zlib.crc32(memoryview(data)[start:start + length]) != crc:
        return 0
    return int(_HEADER.size + length)


def _resync(data: bytes, offset: int) -> int | None:
    """The offset of the next intact frame after ``offset``, or None (the rest is a torn end or
    the zeroed, never written space of a preallocated segment)."""
    candidate = data.find(b"[", offset + _HEADER.size + 1)
    while candidate != -1:
        if _frame_at(data, candidate - _HEADER.size):
            return candidate - _HEADER.size
        candidate = data.find(b"[", candidate + 1)
    return None


def decode(data: bytes, where: str = "journal segment") -> Iterator[tuple[list[Any], bytes]]:
    """Frames of a segment, in order.

    A bad frame followed by intact ones (a flipped bit, a bad disk block) is skipped: decoding
    resumes at the next frame whose header and CRC are valid, and a warning names ``where`` and
    the bytes skipped. A bad frame with nothing intact after it is the crash point (a torn last
    write): decoding stops there, silently.
    """
    offset = skipped = stretches = 0
    while offset + _HEADER.size <= len(data):
        size = _frame_at(data, offset)
        if not size:
            resumed = _resync(data, offset)
            if resumed is None:
                break
            skipped += resumed - offset
            stretches += 1
            offset = resumed
            continue
        payload = data[offset + _HEADER.size: offset + size]
        meta, _, value = payload.partition(b"\n")
        yield json.loads(meta), value
        offset += size
    if stretches:
        log.warning("%s: skipped %s corrupt bytes in %s places; the intact records after them "
                    "were recovered", where, skipped, stretches)


def segment_paths(path: str) -> list[str]:
    """The journal segments next to spool file ``path``, oldest first."""
    prefix = f"{path}.journal."
    found = glob.glob(glob.escape(prefix) + "*")
    return sorted((p for p in found if p.rsplit(".", 1)[1].isdigit()),
                  key=lambda p: int(p.rsplit(".", 1)[1]))


def read_segments(paths: list[str]) -> Iterator[tuple[list[Any], bytes]]:
    """Every intact record of these segments, in order (read-only)."""
    for segment in paths:
        try:
            with open(segment, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:  # released by the running process meanwhile
            continue
        yield from decode(data, segment)


class Journal:
    """Numbered segment files ``<path>.journal.<n>``; one is open for appending.

    ``write``, ``take_retired``, ``give_back`` and ``check`` are called under the writer's lock;
    ``prepare`` may run on another thread. Each live segment (the current one and the full ones
    waiting for their commit) keeps a file descriptor open, so ``check`` can tell that its path
    was deleted and still read what it held.
    """

    def __init__(self, path: str, *, fsync: bool = False) -> None:
        self.path = path
        self.prefix = f"{path}.journal."
        self.fsync = fsync
        self._retired: list[str] = []
        self._fds: dict[str, int] = {}  # live segment path -> its open file
        self._spare: tuple[mmap.mmap, int] | None = None  # segment number + 1, faulted in
        self._spare_lock = new_lock()  # guards the spare and the segment number
        existing = self.segments()
        self._number = (int(existing[-1].rsplit(".", 1)[1]) + 1) if existing else 1
        self.current = f"{self.prefix}{self._number}"
        self._map, self._fds[self.current] = _create(self.current, SEGMENT_BYTES)
        self._offset = 0
        # A new segment could not be made: every write tries again, even one that would fit in
        # what is left of this one, so that refusals do not flicker with the events' sizes.
        self._stuck = False
        self.rejournaled = 0  # segments found deleted and written again

    def segments(self) -> list[str]:
        return segment_paths(self.path)

    def prepare(self) -> None:
        """Create the next segment and fault its pages in, unless that is done already.

        Raises ``SpoolError`` when it cannot be created (disk full, directory not writable);
        the writer then meets the same error when it needs the segment.
        """
        with self._spare_lock:  # the segment number cannot change meanwhile
            if self._spare is not None:
                return
            self._spare = _create(f"{self.prefix}{self._number + 1}", SEGMENT_BYTES)
            spare = self._spare[0]
        if self.fsync:
            return  # each record waits for a disk flush anyway; faulted-in pages would be flushed
        # On an older kernel, or a spare already used and closed, pages fault in on first write.
        with contextlib.suppress(OSError, ValueError):
            spare.madvise(_POPULATE_WRITE)

    def write(self, frame: bytes) -> None:
        """Append one frame; raises ``SpoolError`` (nothing written) when a new segment is
        needed and cannot be created."""
        end = self._offset + len(frame)
        if end > len(self._map) or self._stuck:
            self._rotate(len(frame))
            end = len(frame)
        self._map[self._offset:end] = frame
        if self.fsync:
            self._map.flush()
        self._offset = end

    def _rotate(self, needed: int) -> None:
        """Start a new segment; the full one waits until its records are committed. The new
        segment exists before anything changes, so a failure leaves the journal as it was."""
        with self._spare_lock:
            spare, self._spare = self._spare, None
            number = self._number + 1
            if spare is not None and (needed > len(spare[0]) or not _same_file(
                    f"{self.prefix}{number}", spare[1])):  # too small, or deleted meanwhile
                _discard(spare)
                spare = None
            if spare is None:
                path = f"{self.prefix}{number}"
                try:
                    spare = _create(path, max(SEGMENT_BYTES, needed))
                except SpoolError:
                    self._stuck = True
                    raise
            self._number = number
            self._stuck = False
        self._map.close()
        self._retired.append(self.current)
        self.current = f"{self.prefix}{number}"
        self._map, self._fds[self.current] = spare
        self._offset = 0

    def take_retired(self) -> list[str]:
        """Full segments, handed over to be deleted once their records are committed."""
        retired, self._retired = self._retired, []
        return retired

    def give_back(self, retired: list[str]) -> None:
        """Segments taken for a commit that failed: kept until the next one."""
        self._retired[:0] = retired

    def release(self, paths: list[str]) -> None:
        """Close full segments without deleting them: a reader in another process (the relay)
        owns them now and deletes them once their records are committed."""
        for path in paths:
            fd = self._fds.pop(path, None)
            if fd is not None:
                os.close(fd)

    def remove(self, paths: list[str]) -> list[str]:
        """Delete segments whose records are all committed (one already gone is fine); returns
        those that could not be deleted (a read-only directory): give them back, to try again.
        One left behind is harmless: recovery stores each record once."""
        kept, vanished = [], []
        for path in paths:
            try:
                os.remove(path)
            except FileNotFoundError:
                vanished.append(path)
            except OSError:
                kept.append(path)
                continue
            fd = self._fds.pop(path, None)
            if fd is not None:
                os.close(fd)
        if vanished:
            log.error("journal segments %s were deleted while in use (a temporary-file "
                      "cleaner?); their records were committed already, so nothing was lost. "
                      "Keep %s out of any cleaner's reach", vanished,
                      os.path.dirname(os.path.abspath(self.path)))
        return kept

    def check(self) -> list[str]:
        """Find live segments whose file was deleted or replaced under us, and journal their
        records again so that a crash still finds them; returns the lost paths (logged once, at
        ERROR). Call it before deleting segments, under the writer's lock.

        The current segment's bytes move to a new segment, which becomes the current one; a full
        segment's frames are appended to the current one (recovery keys records by sequence
        number, so their place does not matter, and a record journaled twice is stored once).
        """
        lost = [p for p in [*self._retired, self.current]
                if p in self._fds and not _same_file(p, self._fds[p])]
        if not lost:
            return []
        for path in lost:
            if path == self.current:
                data = self._map[:self._offset]
                self._rotate(len(data))
                self._retired.remove(path)  # nothing to delete: its records move on, below
                self._map[:len(data)] = data
                if self.fsync:
                    self._map.flush()
                self._offset = len(data)
            else:
                data = os.pread(self._fds[path], os.fstat(self._fds[path]).st_size, 0)
                for meta, value in decode(data, path):
                    self.write(encode(json.dumps(meta, separators=(",", ":")).encode(), value))
                self._retired.remove(path)  # only once copied: a failure retries next time
            os.close(self._fds.pop(path))
            self.rejournaled += 1
        log.error("journal segments %s were deleted while in use (a temporary-file cleaner?); "
                  "their records were written again into %s. Keep %s out of any cleaner's "
                  "reach", lost, self.current, os.path.dirname(os.path.abspath(self.path)))
        return lost

    def earlier(self) -> list[str]:
        """The segments an earlier run left (numbered before the current one)."""
        return [s for s in self.segments() if int(s.rsplit(".", 1)[1]) < self._number
                and s not in self._fds]

    def recover(self) -> Iterator[tuple[list[Any], bytes]]:
        """Records of the segments an earlier run left."""
        yield from read_segments(self.earlier())

    def close(self) -> None:
        self._map.close()
        with self._spare_lock:
            if self._spare is not None:
                _discard(self._spare)
                self._spare = None
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _same_file(path: str, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not deleted, not replaced)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return held.st_nlink > 0 and (named.st_ino, named.st_dev) == (held.st_ino, held.st_dev)


def _discard(spare: tuple[mmap.mmap, int]) -> None:
    spare[0].close()
    os.close(spare[1])


def _create(path: str, size: int) -> tuple[mmap.mmap, int]:
    """A new (or emptied) segment file of ``size`` zero bytes, its blocks reserved on disk,
    mapped shared; with its open file descriptor.

    Raises ``SpoolError`` (the file removed) when it cannot be created or the disk has no room.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise SpoolError(f"spool journal segment {path} cannot be created ({exc.strerror}); "
                         f"{_fix(exc)}") from exc
    try:
        # Reserved, not just sized: writing into a sparse mapping on a full disk raises SIGBUS,
        # which kills the process; here a full disk is ENOSPC, now.
        os.posix_fallocate(fd, 0, size)
        return mmap.mmap(fd, size), fd
    except OSError as exc:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.remove(path)
        raise SpoolError(f"spool journal segment {path} cannot be created ({exc.strerror}); "
                         f"{_fix(exc)}") from exc


def _fix(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"free space on its volume (each segment takes {SEGMENT_BYTES} bytes); events "
                "already accepted stay in the spool")
    return ("give this process write access to its directory, or set KAFKA_SPOOL_PATH to a "
            "writable location")
