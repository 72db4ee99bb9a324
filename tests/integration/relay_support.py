"""Helpers for tests of the relay process."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
import urllib.request
from typing import Any

from openalgo_events import spooldir


def relay_processes(spool: str) -> list[int]:
    """Pids of the relay processes of ``spool`` running on this machine."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                args = handle.read().split(b"\0")
            if b"openalgo_events.relay" in args and spool.encode() in args:
                with open(f"/proc/{entry}/stat") as stat:
                    if stat.read().split()[2] != "Z":
                        found.append(int(entry))
    return found


# One record of the relay's log (relay.command's format): time, level, logger, pid, message.
_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ([A-Z]+) (\S+) \[relay \d+\] (.*)$")


def relay_log(spool: str) -> list[tuple[str, str]]:
    """(level name, message) of each record in ``<spool>.relay.log``, what a relay started by a
    publisher wrote; a line that starts no record (a traceback) belongs to the one before."""
    records: list[tuple[str, str]] = []
    try:
        with open(spooldir.log_path(spool), encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return records
    for line in lines:
        match = _RECORD.match(line)
        if match:
            records.append((match.group(1), match.group(3)))
        elif records:
            level, text = records[-1]
            records[-1] = (level, f"{text}\n{line}")
    return records


def relay_errors(spool: str, *words: str) -> list[str]:
    """The relay's ERROR (and CRITICAL) messages that contain every one of ``words``."""
    return [text for level, text in relay_log(spool)
            if level in ("ERROR", "CRITICAL") and all(w in text for w in words)]


def relay_metrics(health: dict[str, Any]) -> str:
    """The Prometheus exposition of the relay named in ``health`` (its loopback port)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{health['relay_port']}/metrics",
                                timeout=5) as reply:
        return str(reply.read().decode())


def stop_relays(spool: str, timeout: float = 30.0) -> None:
    """SIGTERM the relays of ``spool``, as an app restart does (each drains for
    KAFKA_CLOSE_TIMEOUT_SECONDS and exits, leaving what is pending in the spool), and wait
    until they are gone. Sent again until then: a relay just started by a publisher may still
    be starting (forked, not yet running Python), when the first signal finds no relay yet."""
    deadline = time.monotonic() + timeout
    while pids := relay_processes(spool):
        if time.monotonic() > deadline:
            raise AssertionError(f"the relays {pids} of {spool} did not stop within {timeout} s")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        time.sleep(0.1)
