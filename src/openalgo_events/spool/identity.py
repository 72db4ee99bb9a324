"""Which cluster and topic a spool sends to, recorded once in ``identity.json``.

The relay produces only to the topic recorded here (never to one named in a record), so a
process configured for another cluster or topic must not hand its events to this spool.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

from ..errors import ConfigError
from . import format as fmt
from .directory import SpoolDirectory


def claim(directory: SpoolDirectory, bootstrap_servers: str, topic: str) -> None:
    """Record this identity, or check it against the one recorded.

    Raises ``ConfigError`` when the spool belongs to another cluster or topic (naming both and
    the fix). Safe against a concurrent claim (apps and the relay start together): the file
    appears complete, by a hard link, or not at all. A file no claimant could have written
    whole (empty or torn) is replaced.
    """
    mine = {"version": fmt.VERSION, "bootstrap_servers": bootstrap_servers, "topic": topic}
    path = os.path.join(directory.path, fmt.IDENTITY)
    for _attempt in range(5):
        try:
            data = directory.read(fmt.IDENTITY)
        except OSError as exc:
            raise ConfigError([f"cannot read {path} ({exc.strerror}); give this user access to "
                               "the spool directory"]) from exc
        recorded = _parse(data)
        if recorded is not None:
            check(recorded, mine, directory.path)
            return
        tmp = f".{fmt.IDENTITY}.{os.getpid()}-{time.time_ns()}"
        try:
            fd = directory.open(tmp, os.O_WRONLY, create=True)
            try:
                os.write(fd, json.dumps(mine).encode())
            finally:
                os.close(fd)
            if data is not None:  # there, but not a whole document: replaced whole
                directory.rename(tmp, fmt.IDENTITY)
            else:  # absent: whoever links first wins, the others check theirs against it
                os.link(tmp, fmt.IDENTITY, src_dir_fd=directory.fd, dst_dir_fd=directory.fd,
                        follow_symlinks=False)
            return
        except FileExistsError:
            continue
        except OSError as exc:
            raise ConfigError([f"cannot write {path} ({exc.strerror}); make the spool "
                               "directory writable or set KAFKA_SPOOL_PATH to a writable "
                               "location"]) from exc
        finally:
            with contextlib.suppress(OSError):
                directory.unlink(tmp)
    raise ConfigError([f"cannot claim {path}: it keeps changing; is something else rewriting "
                       "it? Set KAFKA_SPOOL_PATH to a spool of its own"])


def read(directory: SpoolDirectory) -> dict[str, Any] | None:
    """The recorded identity, or None when absent or not a whole document."""
    try:
        return _parse(directory.read(fmt.IDENTITY))
    except OSError:
        return None


def _parse(data: bytes | None) -> dict[str, Any] | None:
    try:
        doc = json.loads(data) if data else None
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and "topic" in doc else None


def check(recorded: dict[str, Any], mine: dict[str, Any], where: str) -> None:
    theirs = {k: recorded.get(k) for k in ("bootstrap_servers", "topic")}
    if same_cluster(theirs) != same_cluster(mine):
        raise ConfigError([
            f"spool {where} belongs to {theirs['bootstrap_servers']} topic {theirs['topic']}, "
            f"not {mine['bootstrap_servers']} topic {mine['topic']}: events handed to it would "
            "go there. Give this publisher its own KAFKA_SPOOL_PATH (or leave it unset: the "
            "default is one spool per cluster and topic), or, once that spool is drained "
            f"('openalgo-events spool status --spool {where}' shows 0 pending), delete "
            f"{os.path.join(where, fmt.IDENTITY)}"])


def same_cluster(identity: dict[str, Any]) -> dict[str, Any]:
    """An identity compared by meaning: the bootstrap list in any order, with any spaces."""
    servers = str(identity.get("bootstrap_servers") or "")
    return {"topic": identity.get("topic"), "bootstrap_servers": sorted(
        {part.strip() for part in servers.split(",") if part.strip()})}
