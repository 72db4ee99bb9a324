"""A real python-socketio client that records every event it receives, in order."""

from __future__ import annotations

import threading
from typing import Any

import socketio

from tests.support import wait_for


class Listener:
    """Connects to ``url`` over the given transports and keeps ``(event, payload)`` pairs.

    >>> with Listener(server.url, ["polling"]) as listener:  # doctest: +SKIP
    ...     listener.wait(1)
    """

    def __init__(self, url: str, transports: list[str], auth: dict[str, Any] | None = None,
                 ) -> None:
        self.url = url
        self.transports = transports
        self.auth = auth
        self.client = socketio.Client(reconnection=False)
        self.received: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self.client.on("*", self._record)

    def _record(self, event: str, payload: Any = None) -> None:
        with self._lock:
            self.received.append((event, payload))

    def events(self, name: str | None = None) -> list[tuple[str, Any]]:
        with self._lock:
            return [pair for pair in self.received if name is None or pair[0] == name]

    def wait(self, count: int, name: str | None = None, timeout: float = 10.0,
             ) -> list[tuple[str, Any]]:
        """The first ``count`` events (named ``name``), once that many arrived."""
        wait_for(lambda: len(self.events(name)) >= count, timeout,
                 message=f"{count} {name or 'events'} over {self.transports}")
        return self.events(name)[:count]

    def __enter__(self) -> Listener:
        self.client.connect(self.url, transports=self.transports, auth=self.auth,
                            wait_timeout=10)
        assert self.client.transport() == self.transports[0]
        return self

    def __exit__(self, *exc: object) -> None:
        # Returns once the client's read loop ended. Over websocket this takes about 3 s:
        # websocket-client waits that long for a second close frame that never comes.
        self.client.disconnect()


def rooms_by_user(socketio_server: Any) -> None:
    """Have ``socketio_server`` put each client that connects with ``auth={"user": name}`` in
    that user's room (what an app does for ORDER_EVENT_SOCKETIO_SCOPE=user)."""
    from flask_socketio import join_room

    from openalgo_events.transports.socketio import user_room

    @socketio_server.on("connect")
    def connect(auth: Any = None) -> None:
        if isinstance(auth, dict) and auth.get("user"):
            join_room(user_room(auth["user"]))
