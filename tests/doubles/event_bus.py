"""A look-alike of OpenAlgo's in-process bus: exact-match topics, a 10-thread pool, 1000 pending.

Callbacks run on pool threads named ``eventbus_N``; there is no ordering between them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger("tests.event_bus")


class EventBus:
    def __init__(self, workers: int = 10, max_pending: int = 1000) -> None:
        self._subscribers: dict[str, list[tuple[Callable[[Any], None], str]]] = {}
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="eventbus")
        self._lock = threading.Lock()
        self._pending = 0
        self._max_pending = max_pending
        self._dropped = 0

    def subscribe(self, topic: str, callback: Callable[[Any], None], name: str = "") -> None:
        with self._lock:
            self._subscribers.setdefault(topic, []).append((callback, name))

    def unsubscribe(self, topic: str, callback: Callable[[Any], None]) -> None:
        with self._lock:
            subs = self._subscribers.get(topic, [])
            self._subscribers[topic] = [(cb, n) for cb, n in subs if cb != callback]

    def publish(self, event: Any) -> None:
        with self._lock:
            targets = list(self._subscribers.get(event.topic, ()))
        for callback, name in targets:
            with self._lock:
                if self._pending >= self._max_pending:
                    self._dropped += 1
                    continue
                self._pending += 1
            self._pool.submit(self._run, callback, name, event)

    def _run(self, callback: Callable[[Any], None], name: str, event: Any) -> None:
        try:
            callback(event)
        except Exception:
            log.exception("subscriber %s failed on %s", name, event.topic)
        finally:
            with self._lock:
                self._pending -= 1

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"pending": self._pending, "max_pending": self._max_pending,
                    "dropped": self._dropped}

    def subscriber_count(self, topic: str) -> int:
        with self._lock:
            return len(self._subscribers.get(topic, ()))

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until no callback is queued or running (for tests)."""
        deadline = time.monotonic() + timeout
        while self.stats()["pending"]:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True
