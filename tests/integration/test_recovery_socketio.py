"""Socket.IO connection state recovery in SOCKETIO mode, with real python-socketio clients over
polling and websocket: a client that reconnects with its last offset gets what it missed, in
order, before anything new, exactly once; a gap past the window is reported; a client gets
only what its rooms entitle it to; and with recovery off the payloads are today's."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import socketio
from flask import Flask
from flask_socketio import SocketIO, join_room
from jsonschema import Draft202012Validator

from openalgo_events import Settings, schema
from openalgo_events.demo import DemoServer
from openalgo_events.publisher import EventPublisher, build_publisher
from openalgo_events.recovery import AUTH_KEY, STATUS_EVENT
from openalgo_events.transports.socketio import user_room
from tests.sio_support import Listener, RecoveringClient, rooms_by_user
from tests.support import wait_for

TRANSPORTS = ["polling", "websocket"]
ON = {"ORDER_EVENT_SOCKETIO_RECOVERY": "TRUE"}


class App:
    """A Flask-SocketIO app (threading mode) with a publisher built from ``env``, served."""

    def __init__(self, env: dict[str, str], rooms: bool = False) -> None:
        self.flask = Flask(__name__)
        self.socketio = SocketIO(self.flask, async_mode="threading")
        if rooms:
            rooms_by_user(self.socketio)
        self.publisher: EventPublisher = build_publisher(Settings.from_env(env), self.socketio)
        self.server = DemoServer(self.flask).start()
        self.url = self.server.url

    def order(self, orderid: str, user: str = "alice") -> None:
        self.publisher.publish_order_event(user, "SBIN-EQ", "BUY", orderid, "live",
                                           quantity=1, exchange="NSE")

    @property
    def recovery(self) -> dict[str, Any]:
        return self.publisher.health()["transports"]["socketio"]["recovery"]

    def close(self) -> None:
        self.server.stop()
        self.publisher.close(5)


@pytest.fixture
def app() -> Iterator[App]:
    """The app with recovery on (5,000 events, 120 s)."""
    served = App(ON)
    yield served
    served.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_reconnecting_client_gets_what_it_missed_in_order_then_live_events(app, transport):
    """After three live orders and a disconnect, the five orders published meanwhile arrive on
    reconnect, in order, each once, before the status (recovered, count 5) and before the next
    live order; every payload is today's plus its offset, and payloads and statuses follow
    socketio-recovery.schema.json."""
    client = RecoveringClient()
    first = client.connect(app.url, [transport])
    assert first == {"recovered": False, "count": 0, "reason": "no_offset",
                     "offset": first["offset"]}
    for n in range(3):
        app.order(f"A{n}")
    client.wait_for_value("orderid", "A2")
    client.disconnect()
    for n in range(5):
        app.order(f"B{n}")
    assert app.publisher.flush(5) == 0
    second = client.connect(app.url, [transport])
    assert (second["recovered"], second["count"]) == (True, 5)
    app.order("C0")
    client.wait_for_value("orderid", "C0")
    assert client.values("orderid") == ["A0", "A1", "A2", "B0", "B1", "B2", "B3", "B4", "C0"]
    assert client.dropped == 0
    stream = first["offset"].split(":")[0]
    assert client.values(AUTH_KEY) == [f"{stream}:0:{n}" for n in range(1, 10)]
    _, payload = client.events()[3]
    assert payload == {"symbol": "SBIN-EQ", "action": "BUY", "orderid": "B0", "mode": "live",
                       "quantity": 1, "exchange": "NSE", AUTH_KEY: f"{stream}:0:4"}
    assert second["offset"] == f"{stream}:0:8"
    client.disconnect()
    assert app.recovery["recovering"] == 0 and app.recovery["recovered"] == 1
    contract = schema.load(schema.RECOVERY_FILE)
    for definition, instances in (("status", [first, second]),
                                  ("payload", [p for _, p in client.events()])):
        validator = Draft202012Validator({**contract, "$ref": f"#/$defs/{definition}"})
        for instance in instances:
            validator.validate(instance)


def test_orders_published_while_the_client_keeps_reconnecting_arrive_once_in_order(app):
    """With orders published without pause by another thread while the client disconnects and
    reconnects eight times, it ends with every order exactly once and in publish order: the
    server never sends a duplicate (nothing dropped) nor a live order ahead of a missed one."""
    client = RecoveringClient()
    client.connect(app.url, ["polling"])
    stop = threading.Event()
    published: list[str] = []

    def publish() -> None:
        n = 0
        while not stop.is_set():
            orderid = f"N{n:05d}"
            app.order(orderid)
            published.append(orderid)
            n += 1
            stop.wait(0.002)

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    try:
        for _ in range(8):
            wait_for(lambda: len(client.events()) >= len(published) // 2 > 0, 20,
                     message="orders arriving")
            client.disconnect()
            away_from = len(published)
            wait_for(lambda: len(published) > away_from + 20, 20,  # noqa: B023
                     message="orders published while disconnected")
            status = client.connect(app.url, ["polling"])
            assert status["recovered"] is True and status["count"] > 0, status
    finally:
        stop.set()
        publisher.join(5)
    client.wait_for_value("orderid", published[-1])
    assert client.values("orderid") == published
    assert client.dropped == 0
    client.disconnect()


def test_a_gap_past_the_window_is_reported_not_recovered():
    """With a window of three events, a client that missed five gets no event and a status
    recovered: false, reason too_old, with the cursor to adopt; live events then reach it, and
    a later short gap is recovered again."""
    served = App({**ON, "ORDER_EVENT_SOCKETIO_RECOVERY_MAX_EVENTS": "3"})
    try:
        client = RecoveringClient()
        client.connect(served.url, ["polling"])
        served.order("A0")
        client.wait_for_value("orderid", "A0")
        client.disconnect()
        for n in range(5):
            served.order(f"B{n}")
        assert served.publisher.flush(5) == 0
        status = client.connect(served.url, ["polling"])
        assert status == {"recovered": False, "count": 0, "reason": "too_old",
                          "offset": status["offset"]}
        assert status["offset"].endswith(":0:6")
        served.order("C0")
        client.wait_for_value("orderid", "C0")
        client.disconnect()
        served.order("D0")
        assert served.publisher.flush(5) == 0
        assert client.connect(served.url, ["polling"])["recovered"] is True
        served.order("E0")
        client.wait_for_value("orderid", "E0")
        assert client.values("orderid") == ["A0", "C0", "D0", "E0"]
        assert served.recovery["not_recovered"] == {"no_offset": 1, "too_old": 1}
        client.disconnect()
    finally:
        served.close()


@pytest.mark.parametrize("offset", [
    "s00000000:0:3", "k0123abcd:0:3", "garbage", 42, "s00000000:0:1," * 10_000, None,
])
def test_an_offset_it_cannot_place_is_reported_and_the_connection_kept(app, offset):
    """An offset of another stream (another process, a restart), malformed, oversized or not
    a string: the socket connects, gets a status recovered: false (unknown_offset; no_offset for
    none) and live events from then on."""
    statuses: list[dict[str, Any]] = []
    orders: list[str] = []
    client = socketio.Client(reconnection=False)
    client.on(STATUS_EVENT, statuses.append)
    client.on("order_event", lambda payload: orders.append(payload["orderid"]))
    client.connect(app.url, transports=["polling"], auth={AUTH_KEY: offset}, wait_timeout=10)
    try:
        wait_for(lambda: statuses, 10, message="the status")
        expected = "no_offset" if offset is None else "unknown_offset"
        assert (statuses[0]["recovered"], statuses[0]["reason"]) == (False, expected)
        app.order("L0")
        wait_for(lambda: orders == ["L0"], 10, message="the live order")
    finally:
        client.disconnect()


def test_in_user_scope_a_client_recovers_only_its_own_users_events():
    """Scope user: alice, away, gets back only alice's orders (not bob's, published in the same
    gap), while bob, connected all along, got his live and none of alice's."""
    served = App({**ON, "ORDER_EVENT_SOCKETIO_SCOPE": "user"}, rooms=True)
    try:
        alice, bob = RecoveringClient({"user": "alice"}), RecoveringClient({"user": "bob"})
        alice.connect(served.url, ["polling"])
        bob.connect(served.url, ["websocket"])
        served.order("a0", "alice")
        alice.wait_for_value("orderid", "a0")
        alice.disconnect()
        for n in range(1, 4):
            served.order(f"a{n}", "alice")
            served.order(f"b{n}", "bob")
        bob.wait_for_value("orderid", "b3")
        status = alice.connect(served.url, ["polling"])
        assert (status["recovered"], status["count"]) == (True, 3)
        assert alice.values("orderid") == ["a0", "a1", "a2", "a3"]
        assert bob.values("orderid") == ["b1", "b2", "b3"]
        alice.disconnect()
        bob.disconnect()
    finally:
        served.close()


def test_a_recovered_password_change_carries_no_kafka_only_field(app):
    """The password_change a client missed comes back without the IP address and user agent
    (Kafka only), exactly as live clients got it."""
    live = RecoveringClient()
    away = RecoveringClient()
    live.connect(app.url, ["polling"])
    away.connect(app.url, ["polling"])
    away.disconnect()
    app.publisher.publish_password_change("alice", "success", "Password changed",
                                          ip_address="203.0.113.7", user_agent="Mozilla/5.0")
    wait_for(lambda: live.events("password_change"), 10, message="the live password_change")
    assert away.connect(app.url, ["polling"])["count"] == 1
    [(_, recovered)] = away.events("password_change")
    [(_, shown_live)] = live.events("password_change")
    assert recovered == shown_live
    assert {k: v for k, v in recovered.items() if k != AUTH_KEY} == {
        "user": "alice", "status": "success", "message": "Password changed"}
    live.disconnect()
    away.disconnect()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_with_recovery_off_the_payloads_are_todays(transport):
    """Recovery off (the default): no offset in the payload and no status event, whatever the
    client sends in its auth."""
    served = App({})
    try:
        with Listener(served.url, [transport], auth={AUTH_KEY: "s00000000:0:1"}) as listener:
            served.order("X0")
            [(_, payload)] = listener.wait(1, "order_event")
            assert payload == {"symbol": "SBIN-EQ", "action": "BUY", "orderid": "X0",
                               "mode": "live", "quantity": 1, "exchange": "NSE"}
            served.order("X1")
            listener.wait(2, "order_event")
            assert [name for name, _ in listener.events()] == ["order_event", "order_event"]
    finally:
        served.close()


def test_the_apps_connect_handler_keeps_working_and_a_refused_socket_leaves_nothing(app):
    """A connect handler the app registers after the publisher still runs (it joins a room and
    may refuse); a refused socket is not left marked recovering; an accepted one recovers."""
    seen: list[Any] = []

    @app.socketio.on("connect")
    def connect(auth: Any = None) -> bool:
        seen.append(auth)
        if isinstance(auth, dict) and auth.get("token") == "bad":
            return False
        join_room(user_room("alice"))
        return True

    refused = socketio.Client(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        refused.connect(app.url, transports=["polling"], auth={"token": "bad"},
                        wait_timeout=10)
    assert app.recovery["recovering"] == 0
    client = RecoveringClient({"token": "good"})
    client.connect(app.url, ["polling"])
    client.disconnect()
    app.order("R0")
    assert app.publisher.flush(5) == 0
    assert client.connect(app.url, ["polling"])["count"] == 1
    assert client.values("orderid") == ["R0"]
    assert [auth.get("token") for auth in seen] == ["bad", "good", "good"]
    assert AUTH_KEY in seen[2]
    client.disconnect()
    wait_for(lambda: app.recovery["recovering"] == 0, 5, message="no socket left recovering")
