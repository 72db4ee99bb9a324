"""The recent events one emitter sent, in memory, for sockets that reconnect soon.

Owned by the emitter's own task (never shared between threads): the Socket.IO transport's emit
task in SOCKETIO mode, the bridge's in KAFKA mode. Bounded by count and by age; what falls out
is no longer recoverable from memory (SOCKETIO mode) or is read back from the topic (KAFKA).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple


class Sent(NamedTuple):
    """One event as browsers got it: its position, name, payload (offset included) and room
    (None: every socket of the namespace); ``at`` is when it was emitted (monotonic s). A
    tuple: one is made for every emit, and a tuple is the cheapest to make."""

    partition: int
    offset: int
    event: str
    payload: dict[str, Any]
    room: str | None
    at: float = 0.0

    def for_rooms(self, rooms: frozenset[str]) -> bool:
        """Whether a socket in ``rooms`` gets this event live (the recovery rule too)."""
        return self.room is None or self.room in rooms


class Window:
    """The last ``max_events`` events emitted, none older than ``max_seconds``.

    Per partition, ``last`` is the offset of the last event emitted and ``floor`` the offset
    from which the window holds every event emitted: a client whose last offset is ``o`` can
    be recovered from memory when ``o + 1 >= floor``.

    >>> window = Window(max_events=2, max_seconds=60)
    >>> window.start(0, 1)
    >>> for n in (1, 2, 3):
    ...     window.add(Sent(0, n, "order_event", {}, None, window.clock()))
    >>> window.floor[0], window.last[0], window.covers(0, 1), window.covers(0, 0)
    (2, 3, True, False)
    """

    def __init__(self, max_events: int, max_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_events = max_events
        self.max_seconds = max_seconds
        self.clock = clock
        self._items: deque[Sent] = deque()
        self.last: dict[int, int] = {}
        self.floor: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def start(self, partition: int, next_offset: int) -> None:
        """A partition whose events are emitted from ``next_offset`` on."""
        self.last[partition] = next_offset - 1
        self.floor[partition] = next_offset

    def add(self, sent: Sent) -> None:
        """Keep ``sent`` (emitted at ``sent.at``, by ``clock``), then drop what is past the
        bounds."""
        self._items.append(sent)
        self.last[sent.partition] = sent.offset
        self.floor.setdefault(sent.partition, sent.offset)
        self.trim(sent.at)

    def trim(self, now: float | None = None) -> None:
        """Drop the oldest events beyond ``max_events`` or older than ``max_seconds``."""
        oldest = (self.clock() if now is None else now) - self.max_seconds
        items = self._items
        while items and (len(items) > self.max_events or items[0].at < oldest):
            gone = items.popleft()
            self.floor[gone.partition] = max(self.floor[gone.partition], gone.offset + 1)

    def covers(self, partition: int, seen: int) -> bool:
        """Whether every event of ``partition`` after offset ``seen`` is here."""
        return seen + 1 >= self.floor.get(partition, seen + 1)

    def since(self, seen: Mapping[int, int]) -> Iterator[Sent]:
        """The events after ``seen[partition]``, in emission order (partitions not in
        ``seen`` are left out)."""
        for sent in self._items:
            after = seen.get(sent.partition)
            if after is not None and sent.offset > after:
                yield sent
