"""The relay's own files failing: a state, never a resend and never a crash.

A write of the relay's (its ledger, its status, the rejected store, a move to the trail) that
fails for lack of space, a read-only file system or an I/O error leaves the relay where it was:
the fault is logged once when it starts and once when it ends, shown in health with the path
and the reason, and the write is retried with a backoff (0.5 s doubling to 30 s). Nothing
already sent is sent again because of it: the relay's positions live in memory and move on;
only what a crash during the fault would cost (records resent from the last ledger write) grows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("openalgo_events.relay")


@dataclass
class Fault:
    path: str
    error: str
    since: float
    retry_at: float
    backoff: float


class StorageFaults:
    """The current fault of each of the relay's files, by a short name ("ledger", ...)."""

    def __init__(self) -> None:
        self._faults: dict[str, Fault] = {}

    def due(self, name: str, now: float | None = None) -> bool:
        """Whether to try ``name``'s write now (always, unless it failed recently)."""
        fault = self._faults.get(name)
        return fault is None or (now or time.monotonic()) >= fault.retry_at

    def failed(self, name: str, path: str, exc: BaseException) -> None:
        now = time.monotonic()
        error = getattr(exc, "strerror", None) or str(exc)
        fault = self._faults.get(name)
        if fault is None:
            self._faults[name] = Fault(path, error, time.time(), now + 0.5, 0.5)
            log.error("relay: cannot write its %s %s (%s); it keeps its place in memory and "
                      "tries again with a backoff; nothing is sent twice because of it. Fix: "
                      "%s", name, path, error, _fix(error))
            return
        fault.backoff = min(fault.backoff * 2, 30.0)
        fault.retry_at = now + fault.backoff
        if error != fault.error:
            fault.error = error
            log.error("relay: its %s %s still cannot be written, now: %s", name, path, error)

    def ok(self, name: str) -> None:
        fault = self._faults.pop(name, None)
        if fault is not None:
            log.warning("relay: its %s %s can be written again (after %ss)", name, fault.path,
                        round(time.time() - fault.since))

    def describe(self) -> dict[str, Any] | None:
        """What health shows: the first fault's file, path, error and since when, or None."""
        for name, fault in self._faults.items():
            from .producer import _iso

            return {"file": name, "path": fault.path, "error": fault.error,
                    "since": _iso(fault.since), "faults": len(self._faults)}
        return None

    def __bool__(self) -> bool:
        return bool(self._faults)


def _fix(error: str) -> str:
    text = error.lower()
    if "space" in text or "quota" in text:
        return "free space on the spool's volume"
    if "read-only" in text or "permission" in text or "not permitted" in text:
        return "make the spool directory and its files writable by the relay's user again"
    return "check the spool's disk (dmesg)"
