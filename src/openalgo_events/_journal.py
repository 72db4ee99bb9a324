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
"""

from __future__ import annotations

import contextlib
import glob
import json
import mmap
import os
import struct
import zlib
from collections.abc import Iterator
from typing import Any

from ._threads import new_lock

_HEADER = struct.Struct("<II")  # payload length, CRC-32 of the payload
SEGMENT_BYTES = 4 * 1024 * 1024  # mapped pages count in RSS: small segments, deleted once committed
_POPULATE_WRITE = 23  # madvise MADV_POPULATE_WRITE (Linux 5.14): fault every page in, writable


def encode(meta: bytes, value: bytes) -> bytes:
    """One frame: header, the metadata (a JSON array), a newline, the raw value."""
    payload = meta + b"\n" + value
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def decode(data: bytes) -> Iterator[tuple[list[Any], bytes]]:
    """Frames of a segment, stopping at the first torn or corrupt one (the crash point)."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, offset)
        if length == 0:  # the zeroed, never written rest of a preallocated segment
            return
        payload = data[offset + _HEADER.size: offset + _HEADER.size + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            return
        meta, _, value = payload.partition(b"\n")
        yield json.loads(meta), value
        offset += _HEADER.size + length


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
        yield from decode(data)


class Journal:
    """Numbered segment files ``<path>.journal.<n>``; one is open for appending."""

    def __init__(self, path: str, *, fsync: bool = False) -> None:
        self.path = path
        self.prefix = f"{path}.journal."
        self.fsync = fsync
        self._retired: list[str] = []
        self._spare: mmap.mmap | None = None  # segment number + 1, mapped and faulted in
        self._spare_lock = new_lock()  # guards the spare and the segment number
        existing = self.segments()
        self._number = (int(existing[-1].rsplit(".", 1)[1]) + 1) if existing else 1
        self.current = f"{self.prefix}{self._number}"
        self._map = _create(self.current, SEGMENT_BYTES)
        self._offset = 0

    def segments(self) -> list[str]:
        return segment_paths(self.path)

    def prepare(self) -> None:
        """Create the next segment and fault its pages in, unless that is done already."""
        with self._spare_lock:  # the segment number cannot change meanwhile
            if self._spare is not None:
                return
            spare = self._spare = _create(f"{self.prefix}{self._number + 1}", SEGMENT_BYTES)
        if self.fsync:
            return  # each record waits for a disk flush anyway; faulted-in pages would be flushed
        # On an older kernel, or a spare already used and closed, pages fault in on first write.
        with contextlib.suppress(OSError, ValueError):
            spare.madvise(_POPULATE_WRITE)

    def write(self, frame: bytes) -> None:
        end = self._offset + len(frame)
        if end > len(self._map):
            self._rotate(len(frame))
            end = len(frame)
        self._map[self._offset:end] = frame
        if self.fsync:
            self._map.flush()
        self._offset = end

    def _rotate(self, needed: int) -> None:
        """Start a new segment; the full one waits until its records are committed."""
        self._map.close()
        self._retired.append(self.current)
        with self._spare_lock:
            spare, self._spare = self._spare, None
            self._number += 1
        self.current = f"{self.prefix}{self._number}"
        if spare is not None and needed <= len(spare):
            self._map = spare
        else:
            if spare is not None:
                spare.close()
            self._map = _create(self.current, max(SEGMENT_BYTES, needed))
        self._offset = 0

    def take_retired(self) -> list[str]:
        """Full segments, handed over to be deleted once their records are committed."""
        retired, self._retired = self._retired, []
        return retired

    def give_back(self, retired: list[str]) -> None:
        """Segments taken for a commit that failed: kept until the next one."""
        self._retired[:0] = retired

    @staticmethod
    def remove(paths: list[str]) -> None:
        for path in paths:
            os.remove(path)

    def earlier(self) -> list[str]:
        """The segments an earlier run left (numbered before the current one)."""
        return [s for s in self.segments() if int(s.rsplit(".", 1)[1]) < self._number]

    def recover(self) -> Iterator[tuple[list[Any], bytes]]:
        """Records of the segments an earlier run left."""
        yield from read_segments(self.earlier())

    def close(self) -> None:
        self._map.close()
        with self._spare_lock:
            if self._spare is not None:
                self._spare.close()
                self._spare = None


def _create(path: str, size: int) -> mmap.mmap:
    """A new (or emptied) segment file of ``size`` zero bytes, mapped shared."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)
