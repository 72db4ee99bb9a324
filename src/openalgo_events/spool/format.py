"""The spool on disk, version 2: the one contract between app processes and the relay.

This docstring is the specification.

**Layout.** A spool is one private directory, ``KAFKA_SPOOL_PATH`` (by default
``openalgo_events_spool/<topic>-<cluster>`` in the working directory, where ``<cluster>`` is 8 hex
digits of a hash of the sorted bootstrap servers), mode 0700, owned by the user the app runs
as. Every file in it is 0600 and is opened without following symbolic links; a directory or
file owned by another user, or writable by group or others, is refused (``directory``)::

    identity.json         {"version": 2, "bootstrap_servers": ..., "topic": ...}; written whole
                          (or not at all) by the first process to open the spool, then checked
    relay.lock            a POSIX record lock held by the one relay of the spool (F_GETLK names it)
    keeper.lock           held by the keeper, the small process that restarts a relay that dies
    doorbell              the relay's Unix datagram socket
    ledger                each writer's acknowledged position: the relay's durable state (below)
    status                the relay's figures, for health (below)
    rejected.db           SQLite: events Kafka refused for good, with their reasons
    relay.log             output of a keeper and relay started by a publisher (rotated at 5 MiB)
    writers/<id>/         one journal per app process; <id> is <pid>-<start time in ns>
        lock              flock held by the writer for its whole life (free: the writer is dead)
        <n>.seg           segments n = 1, 2, ... of SEGMENT_BYTES, preallocated, zero-filled
    trail/<id>/           a dead writer's journal once every record of it is acknowledged

**Frames.** A segment is a run of frames from offset 0: ``<u32 length><u32 CRC-32>``
(little-endian; the CRC of the payload), then ``length`` payload bytes: a JSON array ``[seq,
event_id, event_type, user_id, priority, created, timestamp, source, extra_headers]``, a
newline, and the Kafka record's value (the envelope). ``seq`` counts a writer's records from
1; ``created`` is the unix time of the publish; ``timestamp`` and ``source`` are the
envelope's, from which the relay builds the CloudEvents headers; ``extra_headers`` is null or
a list of ``[name, text]`` pairs sent after them (a replay's ``openalgo_replay``). The record's
key is ``user_id`` (UTF-8) and its topic is the spool's (identity.json), never one named in a
record. A zero length marks the end of what was written.

**Who writes what.** A writer creates ``writers/.<id>`` with its lock and first segment, then
renames it to ``writers/<id>`` (the relay never sees a writer without its lock held); a
writer that cannot make its first segment removes what it made. It only appends, with
``pwrite`` (never through a mapping, so a truncated file is an error, never a SIGBUS), and
a record is in the kernel before ``publish`` returns. It creates segment ``n + 1`` only after
its last write into ``n``: the next segment's existence seals the previous one. A writer that
finds its directory or a segment deleted, replaced or truncated writes the records the relay has
not acknowledged again into a new segment (same ``seq``: the relay skips what it has already
acknowledged). After each append it sends its ``<id>`` to the doorbell (a hint: the relay also
looks every ``SAFETY_SCAN`` seconds).

The relay alone deletes: a writer's directory moves to ``trail/`` once the writer is dead and
all of it is acknowledged; trail segments (those, and a live writer's segments wholly before
its acknowledged position) are pruned by age and size. A frame whose CRC or content is bad is
set aside with a count and its position (a live writer's last frame may still be being written:
it is read again for ``CORRUPT_AFTER`` seconds first).

**Ledger and status** are record files: two slots of ``SLOT_BYTES`` each ``<4s magic "OAE2"><u32
CRC-32 of the rest><u64 generation><u32 length>`` then a JSON body, written in place with
``pwrite`` into a preallocated file (no rename: no disk space or directory write needed once it
exists), alternating slots; a reader takes the valid slot with the higher generation, so a torn
write leaves the previous state. The ledger's body is ``{"writers": {<id>: [acked_seq,
segment, offset, rejected, shed]}}``: every record of ``<id>`` with ``seq <= acked_seq`` is
done (delivered, or set aside: ``rejected`` and ``shed`` count those), and reading resumes at
``segment``/``offset``. The status body is the relay's figures (``status`` keys of
``relay.process``).

**Versions.** Version 1 kept a SQLite file at ``KAFKA_SPOOL_PATH`` with ``.writers/``,
``.lock`` and ``.relay.json`` beside it; ``spool.v1`` imports what it had pending.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import orjson

VERSION = 2
SEGMENT_BYTES = 1024 * 1024  # a larger record gets a segment of its own size
SLOT_BYTES = 64 * 1024  # ledger and status slots; a larger body regrows the file
SAFETY_SCAN = 1.0  # seconds between the relay's looks at every writer when no doorbell rings
CORRUPT_AFTER = 2.0  # seconds a live writer's last bad frame may still be being written
DEFAULT_ROOT = "openalgo_events_spool"

IDENTITY = "identity.json"
RELAY_LOCK = "relay.lock"
KEEPER_LOCK = "keeper.lock"
DOORBELL = "doorbell"
LEDGER = "ledger"
STATUS = "status"
REJECTED = "rejected.db"
RELAY_LOG = "relay.log"
WRITERS = "writers"
TRAIL = "trail"
WRITER_LOCK = "lock"

HEADER = struct.Struct("<II")  # payload length, CRC-32 of the payload
_SLOT = struct.Struct("<4sIQI")  # magic, CRC-32 of (generation, length, body), generation, length
_MAGIC = b"OAE2"

# Indexes of a frame's metadata array.
SEQ, EVENT_ID, EVENT_TYPE, USER_ID, PRIORITY, CREATED, TIMESTAMP, SOURCE, EXTRA_HEADERS = range(9)


def default_spool_path(bootstrap_servers: str, topic: str, root: str = DEFAULT_ROOT) -> str:
    """Where a spool lives when ``KAFKA_SPOOL_PATH`` is not set: one per cluster and topic, so
    publishers for different topics in one working directory each get their own."""
    servers = ",".join(sorted({s.strip() for s in bootstrap_servers.split(",") if s.strip()}))
    digest = hashlib.blake2b(servers.encode(), digest_size=4).hexdigest()
    return os.path.join(root, f"{topic}-{digest}")


def segment_name(number: int) -> str:
    return f"{number}.seg"


def segment_number(name: str) -> int | None:
    """The number of a segment file's name, or None for any other file."""
    stem, dot, ext = name.partition(".")
    return int(stem) if dot and ext == "seg" and stem.isdigit() else None


def writer_name(pid: int | None = None) -> str:
    """A name no other process of this machine ever had: the pid and a start time."""
    import time

    return f"{pid or os.getpid()}-{time.time_ns()}"


# -- frames -------------------------------------------------------------------------------------
def encode(meta: list[Any], value: bytes) -> bytes:
    """One frame: header, the metadata array, a newline, the value."""
    payload = orjson.dumps(meta) + b"\n" + value
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


class BadFrame(Exception):
    """A frame at this offset does not check out: torn, being written, or corrupt."""


def frame_at(data: bytes, offset: int) -> tuple[int, bytes] | None:
    """``(end, payload)`` of the frame at ``offset``; None at the end of what was written (a zero
    length) or of ``data``. Raises ``BadFrame`` for a frame whose length or CRC is wrong, or that
    runs past ``data``'s end (``data`` may be a chunk: read more and try again first)."""
    if offset + HEADER.size > len(data):
        return None
    length, crc = HEADER.unpack_from(data, offset)
    if length == 0:
        return None
    end = offset + HEADER.size + length
    if end > len(data):
        raise BadFrame(offset)
    payload = data[offset + HEADER.size:end]
    if zlib.crc32(payload) != crc:
        raise BadFrame(offset)
    return end, payload


def resync(data: bytes, offset: int) -> int | None:
    """The offset of the next intact frame after a bad one at ``offset``, or None. Every
    payload starts with "[" (its metadata array): only those places are tried."""
    candidate = data.find(b"[", offset + HEADER.size + 1)
    while candidate != -1:
        start = candidate - HEADER.size
        try:
            if frame_at(data, start) is not None:
                return start
        except BadFrame:
            pass
        candidate = data.find(b"[", candidate + 1)
    return None


def decode(payload: bytes) -> tuple[list[Any], bytes]:
    """A frame's metadata and value; raises ``ValueError`` when the metadata is not a record's
    (bad JSON, a wrong field type): the frame is then set aside, never retried."""
    text, newline, value = payload.partition(b"\n")
    meta = orjson.loads(text)
    if not (newline and isinstance(meta, list) and len(meta) > SOURCE
            and type(meta[SEQ]) is int and meta[SEQ] > 0
            and all(isinstance(meta[i], str) for i in (EVENT_ID, EVENT_TYPE, USER_ID, TIMESTAMP,
                                                       SOURCE))
            and type(meta[PRIORITY]) is int and isinstance(meta[CREATED], int | float)):
        raise ValueError("not a record's metadata")
    return meta, value


def frames(data: bytes, offset: int = 0) -> Iterator[tuple[int, int, bytes]]:
    """(start, end, payload) of every intact frame of a whole segment from ``offset``, skipping
    bad ones (as a reader of a sealed segment does)."""
    while True:
        try:
            found = frame_at(data, offset)
        except BadFrame:
            resumed = resync(data, offset)
            if resumed is None:
                return
            offset = resumed
            continue
        if found is None:
            # A zero length: the end, unless something intact follows (a zeroed bad block)
            resumed = resync(data, offset) if data.find(b"[", offset) != -1 else None
            if resumed is None:
                return
            offset = resumed
            continue
        end, payload = found
        yield offset, end, payload
        offset = end


# -- record files (ledger, status) -----------------------------------------------------------
class RecordFile:
    """A small JSON document rewritten in place, crash-safe: see "Ledger and status" above.

    Opened on a file descriptor the caller made (``directory.SpoolDirectory.open``); ``write``
    raises ``OSError`` as ``pwrite`` does (an I/O error, a read-only file system).
    """

    def __init__(self, fd: int, *, sync: bool = False) -> None:
        self.fd = fd
        self.sync = sync
        self.slot_bytes = SLOT_BYTES
        self.generation = 0
        found = read_record(fd)
        if found is not None:
            self.generation, self.slot_bytes = found[0], found[2]
        if os.fstat(fd).st_size < 2 * self.slot_bytes:
            os.posix_fallocate(fd, 0, 2 * self.slot_bytes)

    def write(self, body: dict[str, Any]) -> None:
        data = orjson.dumps(body)
        if _SLOT.size + len(data) > self.slot_bytes:
            self._grow(len(data))
        generation = self.generation + 1
        head = struct.pack("<QI", generation, len(data))
        crc = zlib.crc32(data, zlib.crc32(head))
        os.pwrite(self.fd, _MAGIC + struct.pack("<I", crc) + head + data,
                  (generation % 2) * self.slot_bytes)
        if self.sync:
            os.fdatasync(self.fd)
        self.generation = generation

    def _grow(self, needed: int) -> None:
        """Larger slots (more writers than ever before): both slots move, so the file is
        rewritten from offset 0 with the current state in slot 0 and 1 alike."""
        size = self.slot_bytes
        while _SLOT.size + needed > size:
            size *= 2
        current = read_record(self.fd)
        body = orjson.dumps(current[1] if current else {})
        os.posix_fallocate(self.fd, 0, 2 * size)
        self.slot_bytes = size
        head = struct.pack("<QI", self.generation, len(body))
        crc = zlib.crc32(body, zlib.crc32(head))
        for slot in (0, 1):
            os.pwrite(self.fd, _MAGIC + struct.pack("<I", crc) + head + body, slot * size)


def read_record(fd: int) -> tuple[int, dict[str, Any], int] | None:
    """(generation, body, slot size) of a record file's newest valid slot, or None when neither
    slot is valid (a new file, or both damaged)."""
    size = os.fstat(fd).st_size
    best: tuple[int, dict[str, Any], int] | None = None
    for slot_bytes in _slot_sizes(size):
        for slot in (0, 1):
            head = os.pread(fd, _SLOT.size, slot * slot_bytes)
            if len(head) < _SLOT.size:
                continue
            magic, crc, generation, length = _SLOT.unpack(head)
            if magic != _MAGIC or _SLOT.size + length > slot_bytes:
                continue
            data = os.pread(fd, length, slot * slot_bytes + _SLOT.size)
            if zlib.crc32(data, zlib.crc32(head[8:])) != crc:
                continue
            try:
                body = json.loads(data)
            except ValueError:
                continue
            if isinstance(body, dict) and (best is None or generation > best[0]):
                best = (generation, body, slot_bytes)
        if best is not None:
            return best
    return None


def _slot_sizes(file_size: int) -> list[int]:
    """Slot sizes a file of this size may have been written with (a grown file's are larger)."""
    sizes, size = [], SLOT_BYTES
    while 2 * size <= max(file_size, 2 * SLOT_BYTES):
        sizes.append(size)
        size *= 2
    return sizes[::-1]
