"""The app's side of keeping a relay up (``host.starter``): when a keeper it started may still be
starting, it waits out a grace before starting another, but a relay that has worked ends that
grace. Real threads and a real spool directory; starting a keeper is counted instead of done."""

from __future__ import annotations

import threading
import time

import pytest

from openalgo_events import Settings
from openalgo_events.host import starter as starter_module
from openalgo_events.host.starter import Starter, Watch
from openalgo_events.spool.directory import SpoolDirectory


@pytest.fixture
def starts(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    started: list[float] = []
    monkeypatch.setattr(starter_module, "spawn_keeper",
                        lambda settings, spool: started.append(time.monotonic()) or True)
    monkeypatch.setattr(starter_module, "CHECK_EVERY", 0.05)
    monkeypatch.delenv(starter_module.ENV_AUTOSTART, raising=False)
    return started


def test_a_keeper_is_not_started_twice_within_its_grace(tmp_path, starts):
    starter = Starter(Settings.from_env({}), SpoolDirectory(str(tmp_path / "spool")))
    assert starter.ensure() and starter.ensure()
    assert len(starts) == 1  # the first may still be starting: no second one yet


def test_a_relay_that_acknowledged_everything_ends_the_grace(tmp_path, starts):
    """The watch ends once nothing of the app waits, maybe before any look saw the relay it
    started (it delivered and was killed within a look's interval): the next publish's watch
    starts a keeper at once, not after the first one's grace (10 s)."""
    starter = Starter(Settings.from_env({}), SpoolDirectory(str(tmp_path / "spool")))
    waiting = threading.Event()
    waiting.set()
    watch = Watch(lambda: waiting.is_set(), starter)
    watch.poke()
    deadline = time.monotonic() + 5
    while not starts and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(starts) == 1
    waiting.clear()  # the relay delivered everything; the watch ends
    deadline = time.monotonic() + 5
    while watch._running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not watch._running
    waiting.set()  # the relay (and its keeper) were killed; the app publishes again
    watch.poke()
    deadline = time.monotonic() + 2
    while len(starts) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    watch.stop()
    assert len(starts) == 2, "the second keeper waited for the first one's grace"
    assert starts[1] - starts[0] < starter_module.START_GRACE
