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


class RecoveringClient:
    """A python-socketio client that recovers as the page's helper does: it keeps a ``Cursor``,
    sends it on every connect, drops an event it has already seen (counted in ``dropped``) and
    keeps every ``openalgo_events_recovery`` status.

    >>> client = RecoveringClient()  # doctest: +SKIP
    >>> client.connect(server.url, ["polling"])["recovered"]  # doctest: +SKIP
    False
    """

    def __init__(self, auth: dict[str, Any] | None = None) -> None:
        from engineio.payload import Payload

        from openalgo_events.recovery import Cursor

        # A recovery sends its events together, and python-engineio's client drops a polling
        # connection whose response holds more than 16 packets (its Payload.max_decode_packets):
        # a python-socketio client that recovers over polling raises it (docs/recovery.md).
        Payload.max_decode_packets = max(Payload.max_decode_packets, 100_000)
        self.cursor = Cursor()
        self.auth = auth or {}
        self.client = socketio.Client(reconnection=False)
        self.received: list[tuple[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        self.dropped = 0
        self._lock = threading.Lock()
        self.client.on("*", self._record)

    def _record(self, event: str, payload: Any = None) -> None:
        from openalgo_events.recovery import STATUS_EVENT

        with self._lock:
            if event == STATUS_EVENT:
                self.statuses.append(payload)
                self.cursor.adopt(payload["offset"])
            elif self.cursor.accept(payload):
                self.received.append((event, payload))
            else:
                self.dropped += 1

    def _auth(self) -> dict[str, Any]:
        with self._lock:
            return {**self.auth, **self.cursor.auth()}

    def connect(self, url: str, transports: list[str], timeout: float = 20.0,
                ) -> dict[str, Any]:
        """Connect (with the cursor) and return the status that ends this connect's recovery."""
        before = len(self.statuses)
        self.client.connect(url, transports=transports, auth=self._auth, wait_timeout=10)
        wait_for(lambda: len(self.statuses) > before, timeout,
                 message=f"the recovery status over {transports}")
        return self.statuses[before]

    def disconnect(self) -> None:
        self.client.disconnect()

    def events(self, name: str | None = None) -> list[tuple[str, Any]]:
        with self._lock:
            return [pair for pair in self.received if name is None or pair[0] == name]

    def values(self, key: str, name: str = "order_event") -> list[Any]:
        """``payload[key]`` of every ``name`` event received, in order."""
        return [payload.get(key) for _, payload in self.events(name)]

    def wait_for_value(self, key: str, value: Any, name: str = "order_event",
                       timeout: float = 20.0) -> None:
        wait_for(lambda: value in self.values(key, name), timeout,
                 message=lambda: f"{name} with {key}={value!r}; got {self.values(key, name)}")
