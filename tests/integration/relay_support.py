"""Helpers for tests of the relay process."""

from __future__ import annotations

import contextlib
import os


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
