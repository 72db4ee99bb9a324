"""The trail: journal segments kept after delivery, for replay, pruned by age and size.

A dead writer's directory moves whole from ``writers/`` to ``trail/`` once every record of it
is acknowledged (its last segment cut to what was written, its lock file removed); a live
writer's segments wholly before its acknowledged position are trail too. Pruning deletes trail
segments older than ``KAFKA_TRAIL_RETENTION_HOURS`` (by their last write), then the oldest while
the trail takes more than ``KAFKA_TRAIL_MAX_BYTES``; never a segment with a pending record.
Every relay prunes at start and before it exits, and every ``PRUNE_EVERY`` seconds meanwhile,
so relays that live seconds bound it too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

from ..errors import SpoolError
from ..spool import LedgerEntry, trail_segments
from ..spool import format as fmt
from ..spool.directory import SpoolDirectory

log = logging.getLogger("openalgo_events.relay")

PRUNE_EVERY = 60.0


def retire(spool: SpoolDirectory, name: str, end_segment: int, end_offset: int) -> None:
    """Move drained writer ``name`` to ``trail/``: its last segment (``end_segment``) cut at
    ``end_offset``, later (empty) segments and its lock removed. Raises ``OSError``."""
    writers = SpoolDirectory.at(spool, fmt.WRITERS, create=False)
    try:
        directory = SpoolDirectory.at(writers, name, create=False)
        try:
            for segment in directory.listdir():
                number = fmt.segment_number(segment)
                if number is None:
                    directory.unlink(segment)  # the lock; nothing else belongs here
                elif number > end_segment or (number == end_segment and end_offset == 0):
                    directory.unlink(segment)
                elif number == end_segment:
                    fd = directory.open(segment, os.O_RDWR)
                    try:
                        os.ftruncate(fd, end_offset)
                    finally:
                        os.close(fd)
        finally:
            directory.close()
        trail = SpoolDirectory.at(spool, fmt.TRAIL)
        try:
            writers.rename(name, name, target=trail)
        finally:
            trail.close()
    finally:
        writers.close()


def prune(spool: SpoolDirectory, ledger: dict[str, LedgerEntry], retention_seconds: float,
          max_bytes: int, now: float | None = None) -> int:
    """Delete what the trail must not keep; how many segments. Raises ``OSError`` (a
    read-only directory: the caller records a storage fault)."""
    now = time.time() if now is None else now
    segments = []
    for directory, name, st in trail_segments(spool, ledger):
        segments.append((st.st_mtime, st.st_blocks * 512, directory.path, name))
    segments.sort()
    total = sum(size for _, size, _, _ in segments)
    removed = 0
    for mtime, size, path, name in segments:
        if mtime >= now - retention_seconds and total <= max_bytes:
            break
        os.unlink(os.path.join(path, name))  # under the private spool: no one else's link
        total -= size
        removed += 1
    _remove_empty_trail(spool)
    if removed:
        log.info("relay: pruned %s trail segments (retention %s h, %s bytes kept of at most "
                 "%s)", removed, round(retention_seconds / 3600, 2), total, max_bytes)
    return removed


def _remove_empty_trail(spool: SpoolDirectory) -> None:
    try:
        trail = SpoolDirectory.at(spool, fmt.TRAIL, create=False)
    except SpoolError:
        return
    try:
        for name in trail.listdir():
            with contextlib.suppress(OSError):
                os.rmdir(name, dir_fd=trail.fd)  # only an empty one goes
    finally:
        trail.close()
