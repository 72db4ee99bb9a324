"""The reference page in real headless Chromium: an order placed through the ticket shows up
in the live feed, delivered by socket.io-client over long-polling."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from openalgo_events import Settings
from openalgo_events.demo import DemoServer, create_app, demo_state

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture
def demo_url() -> Iterator[str]:
    app, _ = create_app(Settings.from_env({}))
    with DemoServer(app) as server:
        yield server.url
    demo_state(app).close()


@pytest.fixture
def page() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 860})
        finally:
            browser.close()


def test_order_from_the_ticket_appears_in_the_feed(demo_url, page, tmp_path):
    """Filling the ticket and clicking Place order adds an order_event row with that order's
    symbol, action and id to the feed."""
    page.goto(demo_url)
    page.wait_for_selector('#connection[data-state="up"]', timeout=15_000)
    assert page.text_content("#connection") == "connected · polling"

    page.fill("#symbol", "INFY")
    page.click("#action label.sell")
    page.fill("#quantity", "7")
    page.click("#place")

    row = page.wait_for_selector('#feed li[data-event="order_event"]', timeout=15_000)
    result = page.text_content("#ticket-result") or ""
    orderid = re.fullmatch(r"Order (\d+) placed", result)
    assert orderid, result
    summary = row.text_content() or ""
    assert "symbol: INFY" in summary and "action: SELL" in summary
    assert f"orderid: {orderid.group(1)}" in summary and "mode: live" in summary
    page.wait_for_selector("#positions tr.short", timeout=5_000)
    page.screenshot(path=str(tmp_path / "reference-page.png"), full_page=True)
