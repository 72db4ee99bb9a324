"""Which cluster and topic a spool sends to, recorded once in ``identity.json`` with the spool's
own id (``spool_id``: its Kafka transactional id, and its key in the positions topic).

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
    import uuid

    # spool_id names the spool's Kafka transactions (exactly-once): unique to this spool, kept
    # for its life, so a new relay of the same spool fences a zombie one, and no other spool's
    mine = {"version": fmt.VERSION, "bootstrap_servers": bootstrap_servers, "topic": topic,
            "spool_id": uuid.uuid4().hex}
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


def spool_id(directory: SpoolDirectory) -> str:
    """The spool's id (``claim`` first); raises ``ConfigError`` if the identity is unreadable."""
    recorded = read(directory)
    if recorded is None or not isinstance(recorded.get("spool_id"), str):
        raise ConfigError([f"{os.path.join(directory.path, fmt.IDENTITY)} has no spool_id; once "
                           "the spool is drained, delete the file and start again"])
    return str(recorded["spool_id"])


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
