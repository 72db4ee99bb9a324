"""Headless Chromium for the page tests: Debian's /usr/bin/chromium driven by playwright-core,
with a full-page screenshot in the test's own tmp_path when a test fails."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)  # the page fixture reads rep_call
    return report


@pytest.fixture
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Any]:
    """A 1280x860 page; every HTTP answer of 400 or more is kept in ``page.failed_responses``;
    on failure the page is saved as ``failure.png`` in the test's tmp_path."""
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.failed_responses = []
    page.on("response", lambda r: page.failed_responses.append((r.status, r.url))
            if r.status >= 400 else None)
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        shot = tmp_path / "failure.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot of the failing page: {shot}")
