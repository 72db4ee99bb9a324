"""Reading a version-1 spool, to carry what it still holds pending into a version-2 one.

Version 1 kept pending and delivered events in a SQLite file at ``KAFKA_SPOOL_PATH`` (table
``events``, ``delivered IS NULL`` for pending ones; table ``rejected``), the relay's journal
beside it (``<path>.journal.<n>``, records with a ``seq`` not yet in SQLite) and one journal per
app process under ``<path>.writers/<id>/events.journal.<n>`` (records past the cursor committed
in table ``writer_cursors``). A frame was ``<u32 length><u32 CRC-32>`` and a payload of a JSON
array ``[seq, event_id, event_type, user_id, priority, created, topic, key, extra_headers,
value_length, timestamp?, source?]``, a newline and the value.

``import_version_1`` writes every pending event into the new spool as one writer's journal
(same event ids; the relay sends them) and the rejected ones into its ``rejected.db``, then
renames the old file to ``<path>.imported``. The relay runs it by itself for the old default
file (``openalgo_events_spool.db`` in its working directory) when ``KAFKA_SPOOL_PATH`` is unset.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import logging
import os
import sqlite3
import zlib
from collections.abc import Iterator
from typing import Any

from ..config import Settings
from ..errors import SpoolError
from . import format as fmt
from . import open_directory
from .rejected import RejectedStore

log = logging.getLogger("openalgo_events.spool")

LEGACY_DEFAULT = "openalgo_events_spool.db"
_HEAD = fmt.HEADER


def import_version_1(path: str, settings: Settings) -> int:
    """Move the pending events of version-1 spool ``path`` into the spool ``settings`` name;
    how many. Raises ``SpoolError`` (with what to do) when the file is not a version-1 spool,
    is still in use, or was written for another topic."""
    from ..host.journal import JournalWriter

    _check_not_in_use(path)
    try:
        db = sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True)
        db.execute("SELECT 1 FROM events LIMIT 1")
    except sqlite3.Error as exc:
        raise SpoolError(f"{path} is not a version-1 spool file ({exc})") from exc
    try:
        events = list(_pending(db, path))
        rejected = _rejected(db)
    finally:
        db.close()
    topics = {meta[6] for meta, _ in events} | {row[6] for row in rejected}
    other = topics - {settings.order_events_topic}
    if other:
        raise SpoolError(f"{path} holds events for topic {', '.join(sorted(other))}, not "
                         f"{settings.order_events_topic}: import it with the settings of that "
                         "topic (KAFKA_ORDER_EVENTS_TOPIC), into a spool of its own")
    directory = open_directory(settings)
    try:
        from .identity import claim

        claim(directory, settings.bootstrap_servers, settings.order_events_topic)
        if events:
            journal = JournalWriter(directory, sync=True)
            try:
                for meta, value in events:
                    journal.append(_v2_meta(meta, value), value)
            finally:
                journal.close()
        if rejected:
            store = RejectedStore(directory)
            try:
                for row in rejected:
                    meta = _v2_meta(list(row[:9]), row[9])
                    store.add([0, *meta], row[9], f"imported from version 1: {row[10]}")
            finally:
                store.close()
    finally:
        directory.close()
    os.rename(path, f"{path}.imported")
    log.warning("imported %s pending and %s rejected events from the version-1 spool %s into "
                "%s; the old file is now %s.imported", len(events), len(rejected), path,
                settings.spool_location, path)
    return len(events)


def import_legacy_default(settings: Settings) -> None:
    """The relay's start: import ``openalgo_events_spool.db`` of its working directory, the old
    default, when ``KAFKA_SPOOL_PATH`` is unset and it exists. Problems are logged, not raised:
    the old file stays where it is for ``openalgo-events spool import``."""
    if settings.spool_path or not os.path.isfile(LEGACY_DEFAULT):
        return
    try:
        import_version_1(LEGACY_DEFAULT, settings)
    except (SpoolError, OSError) as exc:
        log.error("relay: the version-1 spool %s was not imported: %s. Import it with "
                  "'openalgo-events spool import %s' once that is fixed", os.path.abspath(
                      LEGACY_DEFAULT), exc, LEGACY_DEFAULT)


def _check_not_in_use(path: str) -> None:
    try:
        fd = os.open(f"{path}.lock", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        raise SpoolError(f"{path} is still in use by a process of the old version (its lock "
                         f"{path}.lock is held); stop it first, then import") from exc
    finally:
        os.close(fd)


def _pending(db: sqlite3.Connection, path: str) -> Iterator[tuple[list[Any], bytes]]:
    """Pending events, oldest first: the SQLite rows, then what only the journals hold."""
    committed = db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    for row in db.execute("SELECT seq, event_id, event_type, user_id, priority, created, topic, "
                          "key, extra_headers, value FROM events WHERE delivered IS NULL "
                          "ORDER BY seq"):
        yield list(row[:9]), bytes(row[9])
    cursors: dict[str, tuple[int, int]] = {}
    with contextlib.suppress(sqlite3.Error):
        for writer, text in db.execute("SELECT writer, cursor FROM writer_cursors"):
            segment, offset, _ = json.loads(text)
            cursors[writer] = (segment, offset)
    for meta, value in _journal(glob.glob(glob.escape(path) + ".journal.*"), 0, 0):
        if meta[0] > committed:
            yield meta, value
    for writer_dir in sorted(glob.glob(glob.escape(path) + ".writers/*")):
        segment, offset = cursors.get(os.path.basename(writer_dir), (0, 0))
        yield from _journal(glob.glob(os.path.join(glob.escape(writer_dir), "events.journal.*")),
                            segment, offset)


def _journal(paths: list[str], segment: int, offset: int) -> Iterator[tuple[list[Any], bytes]]:
    numbered = sorted((int(p.rsplit(".", 1)[1]), p) for p in paths
                      if p.rsplit(".", 1)[1].isdigit())
    for number, segment_path in numbered:
        if number < segment:
            continue
        with open(segment_path, "rb") as handle:
            data = handle.read()
        pos = offset if number == segment else 0
        while pos + _HEAD.size <= len(data):
            length, crc = _HEAD.unpack_from(data, pos)
            end = pos + _HEAD.size + length
            if length == 0 or end > len(data):
                break
            payload = data[pos + _HEAD.size:end]
            pos = end
            if zlib.crc32(payload) != crc:
                continue
            text, _, value = payload.partition(b"\n")
            with contextlib.suppress(ValueError):
                yield json.loads(text), value


def _rejected(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
    try:
        return db.execute("SELECT seq, event_id, event_type, user_id, priority, created, topic, "
                          "key, extra_headers, value, reason FROM rejected ORDER BY seq"
                          ).fetchall()
    except sqlite3.Error:
        return []


def _v2_meta(meta: list[Any], value: bytes) -> list[Any]:
    """A version-1 row's fields as a version-2 record's metadata, without its seq."""
    envelope = json.loads(value)
    extra = json.loads(meta[8]) if meta[8] else None
    return [meta[1], meta[2], meta[3], int(meta[4]), float(meta[5]),
            str(envelope.get("timestamp", "")), str(envelope.get("source", "")), extra]
