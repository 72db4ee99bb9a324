"""Helpers for tests of the relay process, its keeper and the spool directory."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
import urllib.request
from typing import Any

from openalgo_events.spool import Spool
from openalgo_events.spool import format as fmt
from tests.support import wait_for


def relay_processes(spool: str, *, keepers: bool = True) -> list[int]:
    """Pids of the relay processes (and their keepers) of ``spool`` running on this machine."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                args = handle.read().split(b"\0")
            if (b"openalgo_events.relay" in args and spool.encode() in args
                    and (keepers or b"--keep" not in args)):
                with open(f"/proc/{entry}/stat") as stat:
                    if stat.read().rsplit(")", 1)[1].split()[0] != "Z":
                        found.append(int(entry))
    return found


def relay_pid(spool: str) -> int | None:
    """The pid holding the spool's relay lock (the relay itself, not its keeper)."""
    with contextlib.suppress(Exception), Spool(spool) as opened:
        return opened.relay_pid()
    return None


def keeper_pid(spool: str) -> int | None:
    with contextlib.suppress(Exception), Spool(spool) as opened:
        return opened.keeper_pid()
    return None


# One record of the relay's log (relay.command's format): time, level, logger, pid, message.
_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ([A-Z]+) (\S+) \[relay \d+\] (.*)$")


def relay_log(spool: str) -> list[tuple[str, str]]:
    """(level name, message) of each record in ``<spool>/relay.log`` (what a keeper and relay
    started by a publisher wrote); a line that starts no record belongs to the one before."""
    records: list[tuple[str, str]] = []
    try:
        with open(os.path.join(spool, fmt.RELAY_LOG), encoding="utf-8",
                  errors="replace") as handle:
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
    """SIGTERM the keepers and relays of ``spool``, as an app restart does (each relay drains
    for KAFKA_CLOSE_TIMEOUT_SECONDS and exits, leaving what is pending in the journals), and
    wait until they are gone. Sent again until then: a keeper just started may not yet have
    started its relay when the first signal comes."""
    deadline = time.monotonic() + timeout
    while pids := relay_processes(spool):
        if time.monotonic() > deadline:
            raise AssertionError(f"the relays {pids} of {spool} did not stop within {timeout} s")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        time.sleep(0.1)


def kill_relays_under(directory: str) -> None:
    """SIGKILL every keeper and relay whose spool lies under ``directory`` (a test's leftovers:
    a relay with events for a broker that is gone waits for it for ever)."""
    for pid in relay_processes(directory):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                args = handle.read().split(b"\0")
            if b"openalgo_events.relay" in args and any(
                    arg.startswith(directory.encode()) for arg in args):
                os.kill(int(entry), signal.SIGKILL)


def wait_relay_gone(spool: str, timeout: float = 20.0) -> None:
    wait_for(lambda: relay_pid(spool) is None and keeper_pid(spool) is None, timeout,
             message=f"the relay of {spool} to exit")
