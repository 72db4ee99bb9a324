"""The offsets on the wire: what a browser event carries, and what a reconnecting client sends.

With recovery on, every event the package emits to browsers carries its position in its
payload, under ``openalgo_events_offset``: a string ``<stream>:<partition>:<offset>``.

- ``stream`` names the sequence the offset belongs to: ``k`` and 8 hex digits for a Kafka topic
  (a hash of the cluster id and the topic name: the same in every app process reading it),
  ``s`` and 8 hex digits for one Socket.IO transport's own sequence (new at each start).
- ``partition`` is the Kafka partition (0 for a Socket.IO transport's sequence).
- ``offset`` is the Kafka record's offset, or the transport's sequence number (from 1).

A client's *cursor* is, for every partition of one stream, the offset of the last event it
got (-1: none yet): the same items joined by commas, ``k1a2b3c4d:0:17,k1a2b3c4d:1:-1``. The
server sends the cursor to adopt after each connect (see ``STATUS_EVENT``); the client updates
it with each event and sends it back on every reconnect as ``auth.openalgo_events_offset``.

>>> cursor = Cursor.parse("s0badf00d:0:41")
>>> cursor.accept({"symbol": "SBIN", "openalgo_events_offset": "s0badf00d:0:42"})
True
>>> cursor.accept({"symbol": "SBIN", "openalgo_events_offset": "s0badf00d:0:42"})  # shown
False
>>> str(cursor)
's0badf00d:0:42'
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

AUTH_KEY = "openalgo_events_offset"
"""The key of the offset in each event's payload, and of the cursor in the ``auth`` payload."""
PAYLOAD_KEY = AUTH_KEY
STATUS_EVENT = "openalgo_events_recovery"
"""The event the server sends each socket once its recovery is over (see ``status``)."""
MAX_CURSOR_CHARS = 65_536  # a client's auth is untrusted input: parse a bounded string only
MAX_PARTITIONS = 4096
_STREAM = r"[a-z][0-9a-f]{8}"
_POSITION = re.compile(rf"({_STREAM}):(\d{{1,10}}):(-1|\d{{1,19}})")
_LONGEST_OFFSET = 2**63 - 1


def kafka_stream(cluster_id: str, topic: str) -> str:
    """The stream of a Kafka topic: every process that reads it computes the same one."""
    digest = hashlib.blake2b(f"{cluster_id}/{topic}".encode(), digest_size=4).hexdigest()
    return f"k{digest}"


def socketio_stream() -> str:
    """A new stream for one Socket.IO transport's sequence (its offsets mean nothing after)."""
    return f"s{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Position:
    """Where one event sits: ``str()`` gives its ``openalgo_events_offset``."""

    stream: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.stream}:{self.partition}:{self.offset}"

    @classmethod
    def parse(cls, text: object) -> Position | None:
        """The position ``text`` names, or None when it is not one."""
        if not isinstance(text, str) or len(text) > 64:
            return None
        match = _POSITION.fullmatch(text)
        if match is None:
            return None
        partition, offset = int(match.group(2)), int(match.group(3))
        if partition >= 2**31 or offset > _LONGEST_OFFSET:
            return None
        return cls(match.group(1), partition, offset)


@dataclass
class Cursor:
    """For each partition of one stream, the offset of the last event seen (-1: none yet).

    The server parses a client's cursor from its ``auth``; a Python client keeps one as the
    page's helper does: ``accept`` each event (False: already seen, drop it), ``adopt`` the
    cursor of each ``openalgo_events_recovery`` status, and connect with ``auth=cursor.auth``
    (python-socketio calls it again on every reconnect).
    """

    stream: str | None = None
    offsets: dict[int, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: object) -> Cursor:
        """The cursor a client sent; ``ValueError`` when it is not a well-formed cursor of one
        stream (wrong type, too long, a malformed item, two streams, a partition twice)."""
        if not isinstance(text, str) or not text or len(text) > MAX_CURSOR_CHARS:
            raise ValueError("not a cursor string")
        items = text.split(",")
        if len(items) > MAX_PARTITIONS:
            raise ValueError("too many partitions")
        cursor = cls()
        for item in items:
            position = Position.parse(item.strip())
            if position is None:
                raise ValueError(f"malformed item {item[:80]!r}")
            if cursor.stream not in (None, position.stream):
                raise ValueError("items of two streams")
            if position.partition in cursor.offsets:
                raise ValueError(f"partition {position.partition} twice")
            cursor.stream = position.stream
            cursor.offsets[position.partition] = position.offset
        return cursor

    def __str__(self) -> str:
        return ",".join(f"{self.stream}:{p}:{o}" for p, o in sorted(self.offsets.items()))

    def accept(self, payload: Any) -> bool:
        """Record an event's offset; False when the event was already seen (drop it). Events
        without an offset are always accepted. An offset of another stream (the server
        restarted, or its mode changed) starts the cursor over on that stream."""
        offset = payload.get(PAYLOAD_KEY) if isinstance(payload, Mapping) else None
        position = Position.parse(offset)
        if position is None:
            return True
        if position.stream != self.stream:
            self.stream, self.offsets = position.stream, {}
        last = self.offsets.get(position.partition)
        if last is not None and position.offset <= last:
            return False
        self.offsets[position.partition] = position.offset
        return True

    def adopt(self, text: object) -> None:
        """Take the cursor a status sent: another stream replaces this one, the same stream
        moves each partition forward only (never back over events already shown)."""
        try:
            other = Cursor.parse(text)
        except ValueError:
            return
        if other.stream != self.stream:
            self.stream, self.offsets = other.stream, dict(other.offsets)
            return
        for partition, offset in other.offsets.items():
            self.offsets[partition] = max(offset, self.offsets.get(partition, offset))

    def auth(self) -> dict[str, str]:
        """The ``auth`` payload to connect with: ``{"openalgo_events_offset": cursor}``, or
        nothing before the first status."""
        return {AUTH_KEY: str(self)} if self.stream is not None else {}


def status(recovered: bool, count: int, cursor: Cursor, reason: str | None = None,
           ) -> dict[str, Any]:
    """The ``openalgo_events_recovery`` payload: ``recovered`` (Socket.IO's term: every missed
    event was sent), ``count`` (how many), ``offset`` (the cursor to adopt) and, when not
    recovered, ``reason``: ``no_offset`` (first connect), ``unknown_offset`` (another
    stream, malformed, or a partition missing), ``too_old`` (past the window or the topic's
    retention), ``too_many`` (more than the most one recovery sends) or ``unavailable`` (the
    topic could not be read in time)."""
    body: dict[str, Any] = {"recovered": recovered, "count": count, "offset": str(cursor)}
    if reason is not None:
        body["reason"] = reason
    return body


REASONS = ("no_offset", "unknown_offset", "too_old", "too_many", "unavailable")
