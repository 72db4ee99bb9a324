"""The reference page in real headless Chromium: what a trader sees and does. An order placed
through the ticket shows up in the live feed with its details and its own timestamp; the
page says so when the app is down, places one order per click however fast the clicks, refuses
a zero quantity, has a favicon, keeps its layout with long payloads, and shows a live status
strip read from the extension's health endpoint."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from openalgo_events import Settings
from openalgo_events.demo import DemoServer, create_app, demo_state
from tests.integration.relay_support import relay_pid
from tests.support import create_topic, wait_for

pytestmark = pytest.mark.browser
WAIT_MS = 15_000


@pytest.fixture
def demo() -> Iterator[tuple[Any, DemoServer]]:
    """The demo app in SOCKETIO mode, served on a free port."""
    app, _ = create_app(Settings.from_env({"ORDER_EVENT_ADMIN_TOKEN": "t0ken-for-tests"}))
    server = DemoServer(app).start()
    yield app, server
    server.stop()
    demo_state(app).close()


def open_page(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_selector('#connection[data-state="up"]', timeout=WAIT_MS)


def order_rows(page: Any) -> list[str]:
    return [row.text_content() or "" for row in
            page.query_selector_all('#feed li[data-event="order_event"] .event-head')]


def test_order_from_the_ticket_appears_in_the_feed_with_its_details(demo, page, tmp_path):
    """Filling the ticket and clicking Place order adds one order_event row showing symbol,
    action, quantity, exchange, product, price, order id and mode, stamped with the event's own
    timestamp (not the arrival time); the position book shows the short position."""
    _, server = demo
    open_page(page, server.url)
    assert page.text_content("#connection") == "connected · polling"
    before = datetime.now(UTC)

    page.fill("#symbol", "INFY")
    page.click("#action label.sell")
    page.fill("#quantity", "7")
    page.select_option("#exchange", "BSE")
    page.select_option("#product", "CNC")
    page.click("#place")

    stamped = page.wait_for_selector(
        '#feed li[data-event="order_event"] time[data-source="event"]', timeout=WAIT_MS)
    result = page.text_content("#ticket-result") or ""
    orderid = re.fullmatch(r"Order (\d+) placed", result)
    assert orderid, result
    [summary] = order_rows(page)
    for part in ("symbol: INFY", "action: SELL", "quantity: 7", "exchange: BSE",
                 "product: CNC", "price: 0", f"orderid: {orderid.group(1)}", "mode: live"):
        assert part in summary, (part, summary)
    when = datetime.fromisoformat(stamped.get_attribute("datetime").replace("Z", "+00:00"))
    assert before.timestamp() - 1 <= when.timestamp() <= time.time() + 1
    assert stamped.get_attribute("title") == f"event timestamp {stamped.get_attribute('datetime')}"
    page.wait_for_selector("#positions tr.short", timeout=5_000)
    page.screenshot(path=str(tmp_path / "reference-page.png"), full_page=True)


def test_a_down_server_is_reported_on_the_page(demo, page):
    """With the app stopped, Place order says the app cannot be reached (not just a console
    error) and the status strip turns to 'unreachable'."""
    _, server = demo
    open_page(page, server.url)
    server.stop()
    page.click("#place")
    page.wait_for_selector('#ticket-result[data-ok="no"]', timeout=WAIT_MS)
    assert "Cannot reach the app" in (page.text_content("#ticket-result") or "")
    page.wait_for_selector('#status[data-state="down"]', timeout=WAIT_MS)
    assert "unreachable" in (page.text_content("#status-error") or "")
    assert page.is_enabled("#place")  # the trader can try again


def place_tcs_and_wait(page: Any) -> None:
    """Place a second, distinct order (TCS) and wait until it is in the feed: events arrive in
    publish order, so every order placed before it has arrived too."""
    page.fill("#symbol", "TCS")
    page.click("#place")
    page.wait_for_function(
        "[...document.querySelectorAll('#feed li[data-event=order_event]')]"
        ".some(r => r.textContent.includes('symbol: TCS'))", timeout=WAIT_MS)


def test_a_double_click_places_one_order(demo, page):
    """A double click on Place order places one order: after a second, distinct order has
    arrived (events arrive in publish order), the feed and book show exactly two."""
    app, server = demo
    open_page(page, server.url)
    page.fill("#quantity", "3")
    page.dblclick("#place")
    page.wait_for_selector("#feed li[data-event='order_event']", timeout=WAIT_MS)
    page.wait_for_function("!document.getElementById('place').disabled", timeout=WAIT_MS)
    place_tcs_and_wait(page)
    rows = order_rows(page)
    assert len(rows) == 2, rows
    book = demo_state(app).desk.positions("demo-user", "live")
    assert sorted((r["symbol"], r["quantity"]) for r in book) == [("SBIN", 3), ("TCS", 3)]


def test_a_second_click_as_the_first_answer_arrives_is_still_one_order(demo, page):
    """The second click of a slow double click, landing just after the first order's answer,
    places nothing: the button stays disabled for a double click's span (500 ms)."""
    app, server = demo
    open_page(page, server.url)
    page.fill("#quantity", "2")
    page.click("#place")
    page.wait_for_selector('#ticket-result[data-ok="yes"]', timeout=WAIT_MS)
    page.click("#place", force=True)  # as a hand would: at once, whatever the button shows
    page.wait_for_function("!document.getElementById('place').disabled", timeout=WAIT_MS)
    place_tcs_and_wait(page)
    book = demo_state(app).desk.positions("demo-user", "live")
    assert sorted((r["symbol"], r["quantity"]) for r in book) == [("SBIN", 2), ("TCS", 2)]
    assert len(order_rows(page)) == 2, order_rows(page)


def test_quantity_zero_is_refused_before_sending(demo, page):
    """The quantity input refuses 0 for a plain order (the browser blocks the submit, so no
    request is made) and accepts it for a smart order, where the position size decides."""
    app, server = demo
    open_page(page, server.url)
    page.fill("#quantity", "0")
    page.click("#place")
    assert page.eval_on_selector("#quantity", "e => e.validity.rangeUnderflow") is True
    assert (page.text_content("#ticket-result") or "") == ""
    page.check("#smart")
    page.fill("#position_size", "4")
    page.click("#place")
    page.wait_for_selector('#ticket-result[data-ok="yes"]', timeout=WAIT_MS)
    assert demo_state(app).desk.positions("demo-user", "live") == [
        {"symbol": "SBIN", "quantity": 4, "mode": "live"}]


def test_the_page_loads_without_a_failed_request(demo, page):
    """Loading the page and its feed makes no request that fails: the favicon included."""
    _, server = demo
    open_page(page, server.url)
    page.wait_for_selector("#status[data-state='up']", timeout=WAIT_MS)
    icon = page.request.get(f"{server.url}/favicon.ico")
    assert icon.status == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert page.failed_responses == []


def test_a_long_payload_neither_squeezes_the_ticket_nor_widens_the_page(demo, page):
    """An opened payload with a 4000-character unbroken message keeps the ticket column at its
    width and the page no wider than the window; the row's summary is cut to one glance while
    the payload keeps everything; the status strip stays in view when the page scrolls."""
    app, server = demo
    open_page(page, server.url)
    width = page.eval_on_selector("#ticket", "e => e.getBoundingClientRect().width")
    demo_state(app).publisher.publish_order_notification("demo-user", "SBIN", "info",
                                                         "X" * 4000)
    summary = page.wait_for_selector('#feed li[data-event="order_notification"] summary',
                                     timeout=WAIT_MS)
    summary.click()
    page.wait_for_selector('#feed li[data-event="order_notification"] pre', state="visible")
    assert page.eval_on_selector("#ticket", "e => e.getBoundingClientRect().width") == width
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    line = page.text_content('#feed li[data-event="order_notification"] .event-summary') or ""
    assert len(line) <= 240 and line.endswith("…")  # the row stays one glance long
    assert "X" * 4000 in (page.text_content('#feed li[data-event="order_notification"] pre')
                          or "")
    for index in range(3):  # a page longer than the window
        demo_state(app).publisher.publish_order_notification("demo-user", "SBIN", "info",
                                                             f"note {index} " + "Z" * 3000)
    page.wait_for_function("document.querySelectorAll('#feed li').length === 4")
    for row in page.query_selector_all("#feed li summary")[:3]:
        row.click()
    page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
    page.wait_for_function("window.scrollY > 500")
    assert page.eval_on_selector("#status", "e => e.getBoundingClientRect().top") == 0


def test_status_strip_and_mode_switch_without_a_broker(demo, page):
    """The strip shows mode SOCKETIO with Kafka not used; switching to KAFKA from the page is
    refused with the reason (no broker configured) and the mode stays."""
    _, server = demo
    open_page(page, server.url)
    page.wait_for_selector("#status[data-state='up']", timeout=WAIT_MS)
    assert page.text_content("#status-mode") == "SOCKETIO"
    assert page.text_content("#status-broker") == "not used"
    assert page.text_content("#status-relay") == "not used"
    page.select_option("#mode-select", "KAFKA")
    page.click("#mode-apply")
    page.wait_for_selector('#ticket-result[data-ok="no"]', timeout=WAIT_MS)
    assert "KAFKA_BOOTSTRAP_SERVERS" in (page.text_content("#ticket-result") or "")
    assert page.text_content("#status-mode") == "SOCKETIO"


@pytest.mark.broker
def test_status_strip_follows_a_mode_switch_with_a_broker(kafka_bootstrap, topic, tmp_path,
                                                          page):
    """With a broker, switching to BOTH from the page changes the mode everywhere and the strip
    says no relay runs yet; the next order also reaches Kafka, through the relay process it
    started, and the strip then shows that relay running (its pid), the broker reachable and
    spool depth 0; a switch made elsewhere shows in the strip and the selector."""
    create_topic(kafka_bootstrap, topic)
    spool = str(tmp_path / "spool")
    app, _ = create_app(Settings.from_env({
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_ORDER_EVENTS_TOPIC": topic,
        "KAFKA_SPOOL_PATH": spool}))
    try:
        with DemoServer(app) as server:
            open_page(page, server.url)
            page.select_option("#mode-select", "BOTH")
            page.click("#mode-apply")
            page.wait_for_function(
                "document.getElementById('status-mode').textContent === 'BOTH' && "
                "document.getElementById('status-relay').textContent === "
                "'not running (the next event starts it)' && "
                "document.getElementById('status-broker').textContent === 'unknown (no relay)'",
                timeout=WAIT_MS)
            assert page.text_content("#route-mode") == "mode BOTH"
            page.click("#place")
            page.wait_for_selector('#feed li[data-event="kafka_record"]', timeout=30_000)
            pid = wait_for(lambda: relay_pid(spool), 30, message="the relay holding the spool")
            page.wait_for_function(
                "document.getElementById('status-spool').textContent === '0' && "
                "document.getElementById('status-broker').textContent === 'reachable' && "
                f"document.getElementById('status-relay').textContent === 'running (pid {pid})'",
                timeout=WAIT_MS)
            assert demo_state(app).events.route.mode.value == "BOTH"
            demo_state(app).events.switch("KAFKA")  # as `openalgo-events mode KAFKA` does
            page.wait_for_function(
                "document.getElementById('status-mode').textContent === 'KAFKA' && "
                "document.getElementById('mode-select').value === 'KAFKA'", timeout=WAIT_MS)
    finally:
        assert demo_state(app).close() == 0
