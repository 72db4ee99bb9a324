"""A wheel is complete: built from the checkout, installed into a fresh virtualenv outside the
repository, ``openalgo-events demo`` serves a page whose live feed works (the socket.io client
ships inside the wheel, copied from npm's socket.io-client at build time, next to the recovery
helper)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def run(*args: str | Path, cwd: Path) -> None:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr


def test_installed_wheel_serves_a_live_page(tmp_path, page):
    """The wheel holds socket.io.min.js and its licence, the recovery helper and its schema; in
    a fresh venv (cwd outside the repository, no node_modules anywhere above) the demo serves
    both scripts and the page's feed shows an order placed from the ticket."""
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", ROOT, "-w", dist, cwd=tmp_path)
    [wheel] = dist.glob("openalgo_events-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "openalgo_events/demo/static/vendor/socket.io.min.js" in names
    assert "openalgo_events/demo/static/vendor/socket.io-client.LICENSE" in names
    assert "openalgo_events/recovery/openalgo-events-recovery.js" in names
    assert "openalgo_events/schemas/socketio-recovery.schema.json" in names

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    run(venv / "bin" / "python", "-m", "pip", "install", "-q", f"{wheel}[socketio]",
        cwd=tmp_path)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KAFKA_", "ORDER_EVENT_", "OPENALGO_EVENTS_", "PYTHONPATH"))}
    demo = subprocess.Popen([venv / "bin" / "openalgo-events", "demo", "--port", "0"],
                            cwd=tmp_path, env={**env, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        assert demo.stdout is not None
        for line in demo.stdout:  # printed at once; the test timeout bounds it
            lines.append(line)
            if "Ctrl-C stops it" in line:
                break
        url = re.search(r"http://127\.0\.0\.1:\d+", "".join(lines))
        assert url, lines
        script = page.request.get(f"{url.group()}/vendor/socket.io.min.js")
        assert script.status == 200 and len(script.body()) > 10_000
        helper = page.request.get(f"{url.group()}/vendor/openalgo-events-recovery.js")
        assert helper.status == 200 and b"OpenAlgoEventsRecovery" in helper.body()
        page.goto(url.group())
        page.wait_for_selector('#connection[data-state="up"]', timeout=15_000)
        page.click("#place")
        row = page.wait_for_selector('#feed li[data-event="order_event"]', timeout=15_000)
        assert "symbol: SBIN" in (row.text_content() or "")
        assert page.failed_responses == []
    finally:
        demo.send_signal(signal.SIGTERM)
        rest, _ = demo.communicate(timeout=30)
    assert demo.returncode == 0, rest
