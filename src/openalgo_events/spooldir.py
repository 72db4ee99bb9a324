"""The spool directory: the one contract between host processes (writers) and the relay process.

This docstring is the specification. Version 1. Everything sits next to the SQLite trail named
by ``KAFKA_SPOOL_PATH`` (default ``openalgo_events_spool.db``, relative to the working directory
of the process that publishes: for OpenAlgo, the directory gunicorn is started in)::

    <spool>                      SQLite trail (pending and delivered events): the relay's only
    <spool>.lock                 flock held by the one relay of this spool (``Spool``'s claim)
    <spool>.journal.<n>          the relay's own journal (replayed events), as before
    <spool>.relay.json           identity: {"version", "bootstrap_servers", "topic"}
    <spool>.status.json          the relay's status, replaced atomically about once a second
    <spool>.relay.log            output of a relay started detached by a publisher
    <spool>.writers/<id>/        one directory per writer process, ``<pid>-<start time ns>``
        lock                     flock held by the writer for its whole life (dead = unlocked)
        events.journal.<n>       numbered segments, mapped and appended to by that writer only

**Records.** A segment is a run of frames (``_journal.encode``): ``<u32 length><u32 CRC-32>`` in
little-endian, then ``length`` payload bytes: a JSON array ``[seq, event_id, event_type,
user_id, priority, created, topic, key, extra_headers, value_length, timestamp, source]``, a
newline, the Kafka message value. ``seq`` counts from 1 per writer; ``created`` is unix time;
``timestamp`` and ``source`` are the envelope's, from which the relay builds the CloudEvents
headers without parsing the value (a reader accepts a row without them and parses the value).
The first ten fields are the SQLite row of ``spool.Spool``, which the relay renumbers. A zero
length is the unwritten rest of a preallocated segment. A frame whose CRC does not match is
either being written (the writer is alive and has written nothing after it: read again later)
or corrupt (skipped, counted, logged).

**Who does what.** A writer creates its directory, takes its lock, and only appends; it never
deletes. The relay reads every writer directory, inserts the records into SQLite with the
writer's cursor (segment, offset, seq) in the same transaction, deletes a segment once the
cursor is past it, and deletes a directory whose writer is dead (its lock is free) once drained.
Segment ``n + 1`` is read only once it holds a record: a writer fills ``n`` before it writes
``n + 1``. A pid can be reused; a lock cannot outlive its process, so liveness is the lock.

**Doorbell.** After each append a writer sends one byte, non-blocking, to the relay's Unix
datagram socket in the abstract namespace (``doorbell_address``); errors are ignored, since the
relay also scans the directory every ``SCAN_EVERY`` seconds: a lost ring only delays.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import mmap
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from ._journal import _HEADER, segment_paths
from .errors import ConfigError

VERSION = 1
SCAN_EVERY = 0.05  # seconds between the relay's directory scans when no doorbell rings
STATUS_EVERY = 1.0  # seconds between status files when nothing changes
STALE_AFTER = 5.0  # a status file older than this means the relay is not running
JOURNAL_NAME = "events"  # segments are <writer dir>/events.journal.<n>


def writers_dir(spool_path: str) -> str:
    return f"{spool_path}.writers"


def identity_path(spool_path: str) -> str:
    return f"{spool_path}.relay.json"


def status_path(spool_path: str) -> str:
    return f"{spool_path}.status.json"


def relay_lock_path(spool_path: str) -> str:
    return f"{spool_path}.lock"


def log_path(spool_path: str) -> str:
    return f"{spool_path}.relay.log"


def doorbell_address(spool_path: str) -> bytes:
    """The relay's doorbell: an abstract Unix socket (no file, no 108-byte path limit)."""
    digest = hashlib.blake2b(os.path.abspath(spool_path).encode(), digest_size=12).hexdigest()
    return b"\0openalgo-events-" + digest.encode()


def writer_id(pid: int | None = None) -> str:
    """A name no other process of this machine ever had: the pid and a start time."""
    return f"{pid or os.getpid()}-{time.time_ns()}"


def locked(path: str) -> bool:
    """Whether some process holds the flock on ``path`` (False when the file does not exist)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # releases the lock we took, if we took it
    return False


def relay_running(spool_path: str) -> bool:
    return locked(relay_lock_path(spool_path))


def take_lock(path: str) -> IO[bytes] | None:
    """Hold the flock on ``path`` (created if need be); None when another process holds it."""
    handle = open(path, "ab")  # noqa: SIM115 (held open as long as the lock is)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


@dataclass(frozen=True)
class Identity:
    """The cluster and topic a spool directory's relay sends to."""

    bootstrap_servers: str
    topic: str

    def claim(self, spool_path: str) -> None:
        """Record this identity, or check it against the one recorded.

        Raises ``ConfigError`` when the directory belongs to another cluster or topic: events
        handed to that relay would go there. Safe against a concurrent claim (hosts and the
        relay start together): the file appears complete, by a hard link, or not at all. A file
        no claimant could have written whole (empty or torn, from a crash of an earlier version
        or a full disk) is replaced, never a reason to stop.
        """
        path = identity_path(spool_path)
        mine = {"version": VERSION, "bootstrap_servers": self.bootstrap_servers,
                "topic": self.topic}
        try:
            for _attempt in range(5):
                tmp = f"{path}.{os.getpid()}-{threading.get_ident()}-{time.time_ns()}.tmp"
                try:
                    if os.path.exists(path):  # seen before it is read: a whole file, or torn
                        recorded = read_json(path)
                        if recorded is not None:
                            _check_identity(recorded, path, spool_path, mine)
                            return
                        with open(tmp, "w") as handle:
                            json.dump(mine, handle)
                        os.replace(tmp, path)  # a stale torn file, replaced whole
                        return
                    with open(tmp, "w") as handle:
                        json.dump(mine, handle)
                    os.link(tmp, path)  # fails if another claimant was first: check theirs
                    return
                except FileExistsError:
                    continue
                finally:
                    with contextlib.suppress(OSError):
                        os.remove(tmp)
        except OSError as exc:
            raise ConfigError([f"cannot write {path} ({exc.strerror}); make its directory "
                               "writable or set KAFKA_SPOOL_PATH to a writable location"]) from exc
        raise ConfigError([f"cannot claim {path}: it keeps changing; is something else "
                           "rewriting it? Set KAFKA_SPOOL_PATH to a spool of its own"])


def _check_identity(recorded: dict[str, Any], path: str, spool_path: str,
                    mine: dict[str, Any]) -> None:
    theirs = {k: recorded.get(k) for k in mine}
    if _same_cluster(theirs) != _same_cluster(mine):
        raise ConfigError([
            f"spool {spool_path} belongs to a relay for {theirs['bootstrap_servers']} topic "
            f"{theirs['topic']}, not {mine['bootstrap_servers']} topic {mine['topic']}; give "
            "this publisher its own KAFKA_SPOOL_PATH, or, once that spool is drained (no events "
            f"pending), delete {path}"])


def _same_cluster(identity: dict[str, Any]) -> dict[str, Any]:
    """An identity compared by meaning: the bootstrap list in any order, with any spaces."""
    servers = str(identity.get("bootstrap_servers") or "")
    return {**identity, "bootstrap_servers": sorted(
        {part.strip() for part in servers.split(",") if part.strip()})}


def read_json(path: str) -> dict[str, Any] | None:
    """A small JSON file written atomically, or None when absent or unreadable."""
    try:
        with open(path, "rb") as handle:
            doc = json.loads(handle.read())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def write_json(path: str, doc: dict[str, Any]) -> None:
    """Replace ``path`` atomically (a reader sees the old file or the new one)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as handle:
        json.dump(doc, handle, separators=(",", ":"))
    os.replace(tmp, path)


def read_status(spool_path: str) -> dict[str, Any] | None:
    """The relay's last status, or None when there is none."""
    return read_json(status_path(spool_path))


def ring(sock: socket.socket, address: bytes) -> None:
    """One doorbell ring; never blocks, never raises (a lost ring only delays, see above)."""
    with contextlib.suppress(OSError):
        sock.sendto(b"\1", address)


def doorbell_socket() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    return sock


def frames_from(data: bytes | mmap.mmap, offset: int) -> Iterator[tuple[int, int, bytes]]:
    """(start, end, payload) of each frame from ``offset``, stopping at the unwritten rest
    (a zero length) or at a frame that is torn, being written, or corrupt (see above)."""
    import zlib

    size = len(data)
    while offset + _HEADER.size <= size:
        length, crc = _HEADER.unpack_from(data, offset)
        end = offset + _HEADER.size + length
        if length == 0 or end > size:
            return
        payload = bytes(data[offset + _HEADER.size:end])
        if zlib.crc32(payload) != crc:
            return
        yield offset, end, payload
        offset = end


def resync(data: bytes | mmap.mmap, offset: int) -> int | None:
    """The offset of the next intact frame after a corrupt one at ``offset``, or None."""
    import zlib

    size = len(data)
    for start in range(offset + 1, size - _HEADER.size + 1):
        length, crc = _HEADER.unpack_from(data, start)
        end = start + _HEADER.size + length
        if length > 2 and end <= size and zlib.crc32(bytes(data[start + _HEADER.size:end])) == crc:
            return start
    return None


def segments(writer_dir: str) -> list[str]:
    """A writer's segments, oldest first."""
    return segment_paths(os.path.join(writer_dir, JOURNAL_NAME))


def segment_number(path: str) -> int:
    return int(path.rsplit(".", 1)[1])
