"""An in-memory transport: what an application's own tests publish into."""

from __future__ import annotations

from typing import Any

from .._threads import new_lock
from ..envelope import Envelope


class MemoryTransport:
    """Keeps every envelope in a list, in publish order.

    >>> from openalgo_events import EventPublisher
    >>> transport = MemoryTransport()
    >>> EventPublisher(transport).publish("force_logout", "alice", {"message": "bye"}).user_id
    'alice'
    >>> transport.events[0].event_type
    'force_logout'
    """

    name = "memory"

    def __init__(self) -> None:
        self.events: list[Envelope] = []
        self._lock = new_lock()

    def publish(self, envelope: Envelope) -> None:
        with self._lock:
            self.events.append(envelope)

    def flush(self, timeout: float = 0) -> int:
        return 0

    def close(self, timeout: float = 0) -> int:
        return 0

    def health(self) -> dict[str, Any]:
        return {"transport": self.name, "healthy": True, "published": len(self.events)}

    def of_type(self, event_type: str) -> list[Envelope]:
        return [e for e in self.events if e.event_type == event_type]

    def clear(self) -> None:
        with self._lock:
            self.events.clear()
