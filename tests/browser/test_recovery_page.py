"""Socket.IO recovery on the reference page, in real headless Chromium: the page loads through
a TCP proxy the test cuts (the network gone, the page disconnected), orders are placed through
the REST API during the gap (as a strategy places them), and when the proxy is back the page
shows every order exactly once, in order, and says how many events it recovered. The same in
KAFKA mode with the app process restarted during the gap, and with two app processes where the
page comes back to the other one; a gap past the window is reported and the book refetched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from openalgo_events import Settings
from openalgo_events.demo import DEMO_API_KEY, DemoServer, create_app, demo_state
from openalgo_events.devbroker import free_port
from tests.integration.tcp_proxy import TcpProxy
from tests.support import create_topic, wait_for

pytestmark = pytest.mark.browser
WAIT_MS = 30_000
ORDER_ROWS = "#feed li[data-event='order_event']"


def place(url: str, symbol: str, quantity: int = 1) -> None:
    """An order through the REST API, straight to the app (never through the cut proxy)."""
    answer = requests.post(f"{url}/api/v1/placeorder", timeout=10, json={
        "apikey": DEMO_API_KEY, "symbol": symbol, "action": "BUY", "quantity": quantity,
        "exchange": "NSE", "product": "MIS", "pricetype": "MARKET", "strategy": "test"})
    assert answer.status_code == 200 and answer.json()["status"] == "success", answer.text


def shown(page: Any) -> list[dict[str, Any]]:
    """The order_event payloads in the feed, oldest first (the feed shows the newest on top)."""
    texts = page.eval_on_selector_all(ORDER_ROWS, "rows => rows.map(r => "
                                      "r.querySelector('pre').textContent)")
    return [json.loads(text) for text in reversed(texts)]


def wait_shown(page: Any, symbol: str) -> None:
    page.wait_for_function(
        "symbol => [...document.querySelectorAll(\"#feed li[data-event='order_event'] pre\")]"
        ".some(pre => JSON.parse(pre.textContent).symbol === symbol)", arg=symbol,
        timeout=WAIT_MS)


def assert_once_in_order(page: Any, symbols: list[str]) -> None:
    """The feed shows exactly these orders, in this order, each with a larger offset."""
    payloads = shown(page)
    assert [p["symbol"] for p in payloads] == symbols
    offsets = [p["openalgo_events_offset"] for p in payloads]
    assert len(set(offsets)) == len(offsets)
    streams = {o.split(":")[0] for o in offsets}
    assert len(streams) == 1, offsets
    assert [int(o.rsplit(":", 1)[1]) for o in offsets] == sorted(
        int(o.rsplit(":", 1)[1]) for o in offsets)


def cut(page: Any, proxy: TcpProxy) -> None:
    proxy.cut()
    page.wait_for_selector('#connection[data-state="down"]', timeout=WAIT_MS)


@contextmanager
def served(settings: Settings) -> Iterator[tuple[Any, str, TcpProxy]]:
    """The demo app in this process, and a proxy in front of it: (app, app URL, proxy)."""
    app, _ = create_app(settings, kafka_tap=False)
    server = DemoServer(app).start()
    proxy = TcpProxy(server.port, free_port()).start()
    try:
        yield app, server.url, proxy
    finally:
        proxy.close()
        server.stop()
        demo_state(app).close()


def open_page(page: Any, proxy: TcpProxy) -> None:
    page.goto(f"http://127.0.0.1:{proxy.port}")
    page.wait_for_selector('#connection[data-state="up"]', timeout=WAIT_MS)
    page.wait_for_function("document.getElementById('recovery').dataset.reason === "
                           "'no_offset'", timeout=WAIT_MS)  # the first connect's status


def test_orders_placed_while_the_page_was_cut_off_are_shown_once_in_order(page):
    """SOCKETIO mode: five orders placed while the page's connection was cut appear after it
    comes back, with 'recovered 5 events', between the orders before and after the gap, each
    once and in order; the book shows all seven."""
    settings = Settings.from_env({"ORDER_EVENT_SOCKETIO_RECOVERY": "TRUE"})
    with served(settings) as (app, url, proxy):
        open_page(page, proxy)
        assert page.is_hidden("#recovery")
        place(url, "BEFORE")
        wait_shown(page, "BEFORE")
        cut(page, proxy)
        gap = [f"GAP{n}" for n in range(5)]
        for symbol in gap:
            place(url, symbol)
        proxy.restore()
        page.wait_for_selector('#recovery[data-recovered="yes"]', timeout=WAIT_MS)
        assert page.text_content("#recovery") == "recovered 5 events"
        place(url, "AFTER")
        wait_shown(page, "AFTER")
        assert_once_in_order(page, ["BEFORE", *gap, "AFTER"])
        assert len(demo_state(app).desk.positions("demo-user", "live")) == 7


def test_a_gap_past_the_window_is_reported_and_the_book_refetched(page):
    """With a window of two events, four orders missed are not recovered: the page says so
    (too_old), shows none of them, refetches the position book (all five symbols), and shows
    the next live order."""
    settings = Settings.from_env({"ORDER_EVENT_SOCKETIO_RECOVERY": "TRUE",
                                  "ORDER_EVENT_SOCKETIO_RECOVERY_MAX_EVENTS": "2"})
    with served(settings) as (_, url, proxy):
        open_page(page, proxy)
        place(url, "BEFORE")
        wait_shown(page, "BEFORE")
        cut(page, proxy)
        for n in range(4):
            place(url, f"GAP{n}")
        proxy.restore()
        page.wait_for_selector('#recovery[data-recovered="no"]', timeout=WAIT_MS)
        assert page.text_content("#recovery") == (
            "missed events not recovered (too_old): book refreshed")
        page.wait_for_function("document.querySelectorAll('#positions tr').length === 5",
                               timeout=WAIT_MS)
        place(url, "AFTER")
        wait_shown(page, "AFTER")
        assert [p["symbol"] for p in shown(page)] == ["BEFORE", "AFTER"]


# -- KAFKA mode: the reference app as separate processes --------------------------------------
class DemoProcess:
    """``openalgo-events demo`` in KAFKA mode with recovery on, as a process of its own."""

    def __init__(self, port: int, env: dict[str, str], log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "openalgo_events", "demo", "--port", str(port)],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_for(self._ready, 60, message=lambda: f"the demo on {port}: "
                     + log.read_text()[-2000:])
        except BaseException:
            self.stop()  # never left running behind a failed start
            raise

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        try:
            health = requests.get(f"{self.url}/openalgo-events/health", timeout=2).json()
        except (requests.ConnectionError, requests.Timeout, ValueError):
            return False
        return bool(health.get("bridge", {}).get("healthy"))

    def emitted(self) -> int:
        return int(requests.get(f"{self.url}/openalgo-events/health",
                                timeout=5).json()["bridge"]["emitted"])

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def kafka_demo(kafka_bootstrap, topic, tmp_path) -> Iterator[Any]:
    """Starts demo processes in KAFKA mode on one fresh topic; stops them at the end."""
    create_topic(kafka_bootstrap, topic, 3)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KAFKA_", "ORDER_EVENT_", "OPENALGO_EVENTS_"))}
    env.update(ORDER_EVENT_MODE="KAFKA", KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
               KAFKA_ORDER_EVENTS_TOPIC=topic, KAFKA_SPOOL_PATH=":memory:",
               ORDER_EVENT_SOCKETIO_RECOVERY="TRUE", PYTHONUNBUFFERED="1")
    started: list[DemoProcess] = []

    def start(port: int | None = None) -> DemoProcess:
        process = DemoProcess(port or free_port(), env, tmp_path / "demo.log")
        started.append(process)
        return process

    yield start
    for process in started:
        if process.proc.poll() is None:
            process.stop()


@pytest.mark.broker
def test_the_page_recovers_across_an_app_restart_during_the_gap(kafka_demo, page):
    """KAFKA mode: orders placed while the page was cut off, some before the app process was
    restarted and one after, all appear once and in order when the page comes back to the
    restarted process (the first ones read back from the topic), with 'recovered 3 events'."""
    app = kafka_demo()
    with TcpProxy(app.port, free_port()) as proxy:
        open_page(page, proxy)
        place(app.url, "BEFORE")
        wait_shown(page, "BEFORE")
        cut(page, proxy)
        place(app.url, "GAP0")
        place(app.url, "GAP1")
        wait_for(lambda: app.emitted() == 3, 30, message="the gap's orders on the topic")
        app.stop()
        app = kafka_demo(app.port)
        place(app.url, "GAP2")
        # GAP2 is missed once the new process emitted it (read back from the topic): before
        # that it is still on its way and arrives live, which is no recovery to count
        wait_for(lambda: app.emitted() >= 1, 30, message="GAP2 emitted by the new process")
        proxy.restore()
        page.wait_for_selector('#recovery[data-recovered="yes"]', timeout=WAIT_MS)
        assert page.text_content("#recovery") == "recovered 3 events"
        place(app.url, "AFTER")
        wait_shown(page, "AFTER")
        assert_once_in_order(page, ["BEFORE", "GAP0", "GAP1", "GAP2", "AFTER"])


@pytest.mark.broker
def test_the_page_recovers_from_the_other_app_process(kafka_demo, page):
    """KAFKA mode, two app processes behind the proxy: the page leaves the first, orders are
    placed on both during the gap, and it comes back to the second with every order once, in
    order, and 'recovered 2 events'."""
    one, two = kafka_demo(), kafka_demo()
    with TcpProxy(one.port, free_port()) as proxy:
        open_page(page, proxy)
        place(one.url, "BEFORE")
        wait_shown(page, "BEFORE")
        cut(page, proxy)
        place(one.url, "GAP0")
        place(two.url, "GAP1")
        wait_for(lambda: two.emitted() == 3, 30, message="the gap's orders at process two")
        proxy.target = two.port
        proxy.restore()
        page.wait_for_selector('#recovery[data-recovered="yes"]', timeout=WAIT_MS)
        assert page.text_content("#recovery") == "recovered 2 events"
        place(two.url, "AFTER")
        wait_shown(page, "AFTER")
        assert_once_in_order(page, ["BEFORE", "GAP0", "GAP1", "AFTER"])
