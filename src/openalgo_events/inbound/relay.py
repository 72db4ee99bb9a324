"""Notifications from the consumer's OS thread to the browsers, safely under eventlet.

In OpenAlgo's eventlet worker the Socket.IO server's queues and tasks are green: touching them
from a real OS thread (where the consumer runs) is unsafe. A ``deque`` is safe from any thread,
so the consumer appends there and a task of the Socket.IO server, started from the app's own
context, drains it cooperatively into a ``SocketIOTransport``.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from .._threads import real_sleep
from ..envelope import Envelope
from ..transports.socketio import SocketIOTransport

DRAIN_EVERY = 0.05  # seconds between drains: the latency a notification may add


class BrowserRelay:
    """A ``Transport`` whose ``publish`` may be called from any OS thread.

    >>> relay = BrowserRelay(socketio, scope="user")  # doctest: +SKIP
    >>> relay.start()  # from the app context, where the consumer is started  # doctest: +SKIP
    """

    name = "socketio-relay"

    def __init__(self, socketio: Any, *, scope: str = "broadcast") -> None:
        self._socketio = socketio
        self._transport = SocketIOTransport(socketio, scope=scope)
        self._pending: deque[Envelope] = deque()
        self._running = False

    def start(self) -> None:
        """Start the draining task; call it from the app's context (not the consumer thread)."""
        if not self._running:
            self._running = True
            self._socketio.start_background_task(self._drain)

    def _drain(self) -> None:
        while self._running or self._pending:
            while self._pending:
                self._transport.publish(self._pending.popleft())
            self._socketio.sleep(DRAIN_EVERY)

    def publish(self, envelope: Envelope) -> None:
        self._pending.append(envelope)

    def flush(self, timeout: float = 5.0) -> int:
        """Wait until the task took every notification; how many it did not."""
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            real_sleep(DRAIN_EVERY)  # on the consumer's OS thread: never a green sleep
        return len(self._pending)

    def close(self, timeout: float = 5.0) -> int:
        left = self.flush(timeout)
        self._running = False
        return left

    def health(self) -> dict[str, Any]:
        return {"transport": self.name, "healthy": True, "pending": len(self._pending)}
