"""Testing helpers, public so applications can assert on what they publish without a broker."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .publisher import EventPublisher, EventPublisherFactory
from .transports.memory import MemoryTransport


@contextmanager
def capture_events(publisher: EventPublisher | None = None) -> Iterator[MemoryTransport]:
    """Capture everything ``publisher`` (default: the process's publisher) sends, instead of
    sending it.

    >>> with capture_events(EventPublisher(MemoryTransport())) as events:
    ...     pass
    >>> events.events
    []

    With no publisher and none created yet, one is created on the memory transport and
    installed as the process's publisher for the block.
    """
    memory = MemoryTransport()
    if publisher is None and EventPublisherFactory._instance is None:
        EventPublisherFactory._instance = EventPublisher(memory)
        try:
            yield memory
        finally:
            EventPublisherFactory._instance = None
        return
    target = publisher or EventPublisherFactory._instance
    assert target is not None
    original = target.transport
    target.transport = memory
    try:
        yield memory
    finally:
        target.transport = original


__all__ = ["MemoryTransport", "capture_events"]
