"""Socket.IO: today's behaviour. The same event names and payload dicts reach the browser.

Emits run on one background task of the Socket.IO server (a thread, or a green thread under
eventlet), fed by the server's own queue: ``publish`` never waits on a client, and the order
of emits is the order of publishes.
"""

from __future__ import annotations

import logging
from typing import Any

from .._threads import new_lock
from ..envelope import Envelope
from ..stats import Stats

log = logging.getLogger("openalgo_events.socketio")
_STOP = object()


def user_room(user_id: str) -> str:
    """The room a user's sockets join when events are scoped per user."""
    return f"user:{user_id}"


class SocketIOTransport:
    """Emits ``envelope.data`` as event ``envelope.event_type`` through a Flask-SocketIO server.

    ``scope="broadcast"`` (today's behaviour) reaches every client; ``scope="user"`` reaches
    only the sockets in the user's room (see ``user_room``).

    >>> from flask import Flask; from flask_socketio import SocketIO
    >>> transport = SocketIOTransport(SocketIO(Flask(__name__)))
    """

    name = "socketio"

    def __init__(self, socketio: Any, *, scope: str = "broadcast", namespace: str = "/",
                 stats: Stats | None = None) -> None:
        self.socketio = socketio
        self.scope = scope
        self.namespace = namespace
        self.stats = stats or Stats()
        self._queue: Any = None
        self._start_lock = new_lock()
        self._idle: Any = None
        self._emitted = 0
        self._failed = 0

    def _start(self) -> Any:
        with self._start_lock:
            return self._queue or self._start_worker()

    def _start_worker(self) -> Any:
        eio = self.socketio.server.eio
        queue = eio.create_queue()
        self._idle = eio.create_event()
        self._idle.set()
        self.socketio.start_background_task(self._run, queue)
        self._queue = queue
        return queue

    def publish(self, envelope: Envelope) -> None:
        queue = self._queue or self._start()
        if self._idle.is_set():  # a lock-free read; clearing takes the event's lock
            self._idle.clear()
        queue.put(envelope)
        self.stats.add(Stats.event_key("published", envelope.event_type, self.name))

    def _run(self, queue: Any) -> None:
        while True:
            envelope = queue.get()
            if envelope is _STOP:
                return
            try:
                room = user_room(envelope.user_id) if self.scope == "user" else None
                self.socketio.emit(envelope.event_type, dict(envelope.data), to=room,
                                   namespace=self.namespace)
                self._emitted += 1
                self.stats.incr("delivered", event_type=envelope.event_type, transport=self.name)
            except Exception:
                self._failed += 1
                self.stats.incr("failed", event_type=envelope.event_type, transport=self.name)
                log.exception("Socket.IO emit of %s event %s failed",
                              envelope.event_type, envelope.event_id)
            if queue.empty():
                self._idle.set()

    def flush(self, timeout: float = 5.0) -> int:
        if self._queue is None:
            return 0
        self._idle.wait(timeout)
        return int(self._queue.qsize())

    def close(self, timeout: float = 5.0) -> int:
        left = self.flush(timeout)
        if self._queue is not None:
            self._queue.put(_STOP)
            self._queue = None
        return left

    def health(self) -> dict[str, Any]:
        pending = self._queue.qsize() if self._queue is not None else 0
        return {"transport": self.name, "healthy": True, "pending": pending,
                "emitted": self._emitted, "failed": self._failed, "scope": self.scope}
