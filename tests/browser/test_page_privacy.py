"""What the reference page receives, read off the wire in real headless Chromium: every
Socket.IO packet of every long-polling answer (and any WebSocket frame) the page gets. The
catalog's Kafka-only fields (``password_change``'s IP address and user agent) are in none of
them, and the password change's row still shows the event's own timestamp."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from openalgo_events import Settings
from openalgo_events.catalog import CATALOG
from openalgo_events.demo import DemoServer, create_app, demo_state

pytestmark = pytest.mark.browser
WAIT_MS = 15_000


class Wire:
    """Every Engine.IO payload the page receives: long-polling answers and WebSocket frames."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self._lock = threading.Lock()
        self.payloads: list[str] = []
        page.on("requestfinished", self._polled)
        page.on("websocket", lambda ws: ws.on("framereceived", self._frame))

    def _polled(self, request: Any) -> None:
        if "/socket.io/" in request.url and request.method == "GET":
            response = request.response()
            if response is not None:
                self._add(response.text())

    def _frame(self, frame: Any) -> None:
        self._add(frame if isinstance(frame, str) else frame.decode(errors="replace"))

    def _add(self, text: str) -> None:
        with self._lock:
            self.payloads.append(text)

    def packets(self) -> list[str]:
        """Engine.IO packets, one each (a polling answer joins several with \\x1e)."""
        with self._lock:
            return [p for payload in self.payloads for p in payload.split("\x1e") if p]

    def wait(self, predicate: Any, timeout: float, message: str) -> Any:
        """Poll ``predicate`` until it is truthy; Playwright's own wait between polls lets it
        deliver the network events that fill this record (a plain sleep would not)."""
        deadline = time.monotonic() + timeout
        while not (result := predicate()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {message}")
            self.page.wait_for_timeout(50)
        return result

    def events(self) -> list[tuple[str, Any]]:
        """Socket.IO EVENT packets (``42[name, payload]``) as (name, payload)."""
        found = []
        for packet in self.packets():
            if packet.startswith("42"):
                name, *args = json.loads(packet[2:])
                found.append((name, args[0] if args else None))
        return found


@pytest.fixture
def demo() -> Iterator[DemoServer]:
    """The demo app in SOCKETIO mode (broadcast: every browser gets every event)."""
    app, _ = create_app(Settings.from_env({}))
    server = DemoServer(app).start()
    yield server
    server.stop()
    demo_state(app).close()


def test_the_page_never_receives_kafka_only_fields(demo, page):
    """A password change made on the page reaches it, on the wire, without the IP address and
    user agent the catalog keeps for Kafka (neither in the event nor in the demo's own
    demo_event_meta message), and its feed row shows the event's own timestamp."""
    wire = Wire(page)
    page.goto(demo.url)
    page.wait_for_selector('#connection[data-state="up"]', timeout=WAIT_MS)
    user_agent = page.evaluate("navigator.userAgent")

    page.fill("#new_password", "a-new-passw0rd")
    page.click("#change-password")

    def both_arrived() -> list[tuple[str, Any]]:
        events = wire.events()
        names = [(name, (payload or {}).get("event_type")) for name, payload in events]
        return events if {("password_change", None),
                          ("demo_event_meta", "password_change")} <= set(names) else []

    events = wire.wait(both_arrived, 20, "password_change and its meta on the wire")
    kafka_only = CATALOG["password_change"].kafka_only
    assert kafka_only == {"ip_address", "user_agent"}
    for packet in wire.packets():
        assert user_agent not in packet, packet
        assert not any(f'"{name}"' in packet for name in kafka_only), packet
    [event] = [payload for name, payload in events if name == "password_change"]
    [meta] = [payload for name, payload in events
              if name == "demo_event_meta" and payload["event_type"] == "password_change"]
    assert event == {"user": "demo-user", "status": "success",
                     "message": "Password changed successfully"}
    assert meta["data"] == event
    stamp = page.wait_for_selector(
        '#feed li[data-event="password_change"] time[data-source="event"]', timeout=WAIT_MS)
    assert stamp.get_attribute("datetime") == meta["timestamp"]
