"""SOCKETIO mode is today's behaviour: a real python-socketio client, over websocket and over
long-polling (OpenAlgo's front end uses polling only), receives from the publisher exactly
the event names and payload dicts that a plain ``socketio.emit`` sends, in publish order,
and publishing never waits for the emit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask_socketio import SocketIO

from openalgo_events import SocketIOEventPublisher
from openalgo_events.demo import DemoServer
from tests.sio_support import Listener, rooms_by_user

TRANSPORTS = ["websocket", "polling"]

# The design's five events, then two more of OpenAlgo's own, with the payloads the app
# emits today (plus the extra fields the design adds to order_event).
TODAY: list[tuple[str, str | None, dict[str, Any]]] = [
    ("order_event", "alice", {"symbol": "SBIN-EQ", "action": "BUY", "orderid": "ORD1",
                              "exchange": "NSE", "price_type": "MARKET", "product_type": "MIS",
                              "mode": "live", "broker": "angel", "quantity": "1",
                              "price": "850.50"}),
    ("analyzer_update", "alice", {
        "request": {"symbol": "RELIANCE-EQ", "action": "BUY", "quantity": "1",
                    "api_type": "placesmartorder"},
        "response": {"mode": "analyze", "status": "success", "orderid": "SANDBOX_ORD_123"}}),
    ("order_notification", "alice", {"symbol": "INFY-EQ", "status": "info",
                                     "message": "Positions Already Matched. No Action needed."}),
    ("master_contract_download", None, {"status": "success",
                                        "message": "Master contract downloaded successfully"}),
    ("password_change", "bob", {"user": "bob", "status": "success",
                                "message": "Password changed successfully"}),
    ("order_update", "alice", {"mode": "live", "broker": "angel", "orderid": "ORD1",
                               "symbol": "SBIN-EQ", "exchange": "NSE", "action": "BUY",
                               "quantity": 1, "price": 850.5, "trigger_price": 0.0,
                               "pricetype": "LIMIT", "product": "MIS",
                               "order_status": "complete", "filled_quantity": 1,
                               "pending_quantity": 0, "average_price": 850.45,
                               "rejection_reason": ""}),
    ("cancel_order_event", "alice", {"status": "success", "orderid": "3 orders canceled",
                                     "mode": "live", "batch_order": True, "is_last_order": True,
                                     "canceled_count": 3, "failed_count": 0}),
]


class SlowEmits:
    """The app's Socket.IO server, except that each emit takes ``seconds`` (a slow client)."""

    def __init__(self, socketio: SocketIO, seconds: float) -> None:
        self._socketio = socketio
        self.seconds = seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self._socketio, name)

    def emit(self, *args: Any, **kwargs: Any) -> None:
        time.sleep(self.seconds)
        self._socketio.emit(*args, **kwargs)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[DemoServer, SocketIO]]:
    """A Flask-SocketIO server in threading mode, like OpenAlgo's, on a free loopback port."""
    app = Flask(__name__)
    socketio = SocketIO(app, async_mode="threading")

    rooms_by_user(socketio)

    with DemoServer(app) as running:
        yield running, socketio


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_publisher_emits_what_socketio_emit_emits(server, transport):
    """Each event reaches the client with the same name and the same payload dict as a plain
    ``socketio.emit`` of it, in publish order."""
    running, socketio = server
    publisher = SocketIOEventPublisher(socketio)
    expected = [(name, payload) for name, _, payload in TODAY]
    with Listener(running.url, [transport]) as listener:
        for name, payload in expected:
            socketio.emit(name, payload)
        today = listener.wait(len(expected))
        for name, user, payload in TODAY:
            publisher.publish(name, user, payload)
        published = listener.wait(2 * len(expected))[len(expected):]
    publisher.close()
    assert today == expected
    assert published == today


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_publish_returns_before_the_emit(server, transport):
    """With every emit taking 0.5 s, a Socket.IO handler that publishes answers its client
    at once, and the event still arrives afterwards, whole."""
    running, socketio = server
    publisher = SocketIOEventPublisher(SlowEmits(socketio, 0.5))
    order = TODAY[0][2]

    def place(data: dict[str, Any]) -> str:
        started = time.perf_counter()
        publisher.publish("order_event", "alice", order)
        return f"{time.perf_counter() - started:.6f}"

    socketio.on_event("place", place)
    with Listener(running.url, [transport]) as listener:
        called = time.perf_counter()
        publish_seconds = float(listener.client.call("place", {}, timeout=5))
        answered = time.perf_counter() - called
        assert listener.events() == []  # the ack came first
        assert listener.wait(1) == [("order_event", order)]
        delivered = time.perf_counter() - called
    publisher.close()
    assert publish_seconds < 0.05
    assert answered < 0.4 < delivered


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_user_scope_reaches_only_that_users_sockets(server, transport):
    """With ``scope="user"`` an event goes to its user's room and to no other socket."""
    running, socketio = server
    publisher = SocketIOEventPublisher(socketio, scope="user")
    with (Listener(running.url, [transport], auth={"user": "alice"}) as alice,
          Listener(running.url, [transport], auth={"user": "bob"}) as bob):
        publisher.publish_order_event("alice", "SBIN-EQ", "BUY", "A1", "live")
        publisher.publish_order_event("bob", "INFY-EQ", "SELL", "B1", "live")
        publisher.publish_order_event("carol", "TCS-EQ", "BUY", "C1", "live")
        publisher.publish_order_event("alice", "SBIN-EQ", "SELL", "A2", "live")
        publisher.publish_order_event("bob", "INFY-EQ", "BUY", "B2", "live")
        # Emits are sent in publish order, so a stray event would arrive before B2 (or A2).
        alice.wait(2)
        bob.wait(2)
    publisher.close()
    assert [p["orderid"] for _, p in alice.events()] == ["A1", "A2"]
    assert [p["orderid"] for _, p in bob.events()] == ["B1", "B2"]
