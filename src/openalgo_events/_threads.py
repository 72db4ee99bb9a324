"""Real OS threads and their primitives, even inside a monkey-patched eventlet worker.

OpenAlgo runs under gunicorn's eventlet worker, where ``threading`` is patched into green
threads on one OS thread: a blocking librdkafka ``poll`` there freezes every request. The
package's background work therefore runs on real threads taken from the unpatched modules.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any


def _original(name: str) -> ModuleType:
    if "eventlet" in sys.modules:
        from eventlet import patcher

        # eventlet names the threading patch "thread": is_monkey_patched("threading") is False
        if patcher.is_monkey_patched("thread" if name == "threading" else name):
            module: ModuleType = patcher.original(name)
            return module
    return sys.modules[name] if name in sys.modules else __import__(name)


def real_threading() -> Any:
    """The unpatched ``threading`` module."""
    return _original("threading")


def real_module(name: str) -> Any:
    """The unpatched module ``name`` (``os``: its ``waitpid`` blocks only the calling thread)."""
    return _original(name)


def real_sleep(seconds: float) -> None:
    """``time.sleep`` that blocks only the calling OS thread."""
    _original("time").sleep(seconds)


def start_thread(target: Callable[[], None], name: str) -> threading.Thread:
    """Start a daemon OS thread (never a green thread).

    Under eventlet its log records must not reach the host's green-locked handlers from this
    thread: ``_hostlog.guard()`` routes them through the hub first.
    """
    from ._hostlog import guard

    guard()
    thread: threading.Thread = real_threading().Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def new_lock() -> threading.Lock:
    lock: threading.Lock = real_threading().Lock()
    return lock


def new_event() -> threading.Event:
    event: threading.Event = real_threading().Event()
    return event


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.005,
               sleep: Callable[[float], None] | None = None) -> bool:
    """Wait for ``predicate`` from the caller's thread, cooperatively under eventlet.

    ``time.sleep`` is whatever the application uses: patched, it yields to other green threads.
    ``sleep`` replaces it (e.g. the Socket.IO server's own ``sleep``).
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        (sleep or time.sleep)(step)
    return True
