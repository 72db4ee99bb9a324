"""The envelope every event travels in, whatever the transport.

On Kafka the value is the envelope as compact JSON, the key is the user id, and the headers
carry the CloudEvents binary-mode attributes, so a consumer can route without parsing.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from functools import cached_property
from typing import Any

from .errors import EventValidationError

SCHEMA_VERSION = 1
CLOUDEVENTS_SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"
ENVELOPE_KEYS = ("event_id", "event_type", "timestamp", "user_id", "source", "schema_version",
                 "data")

# Keys whose values are credentials. They never leave the process: nested ones are dropped,
# and one passed directly as an event field is a caller bug, rejected at the call.
SECRET_KEYS = frozenset(
    {
        "apikey", "api_key", "api_secret", "secret", "client_secret",
        "password", "passwd", "old_password", "new_password", "confirm_password",
        "access_token", "auth_token", "refresh_token", "feed_token",
        "totp", "totp_code", "sasl_password",
    }
)

_PLAIN = frozenset({str, int, bool, type(None)})
# One encoder, built once: json.dumps with non-default options builds a new one per call.
compact_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_id_lock = threading.Lock()
_id_last_ms = 0
_id_counter = 0
# Random bits for ids come from a pool refilled 4 KiB at a time: os.urandom releases the GIL,
# and on the publish path every release lets the relay thread take over the caller.
_RANDOM_POOL_SIZE = 4096
_random_pool = b""
_random_used = 0


def _reset_random_pool() -> None:
    """A forked child must not reuse its parent's pool (it would repeat the parent's ids)."""
    global _random_pool, _random_used
    _random_pool, _random_used = b"", 0


os.register_at_fork(after_in_child=_reset_random_pool)


def _random_bits(nbytes: int) -> int:
    """``nbytes`` bytes from the OS CSPRNG, as an int; call with ``_id_lock`` held."""
    global _random_pool, _random_used
    if _random_used + nbytes > len(_random_pool):
        _random_pool, _random_used = os.urandom(_RANDOM_POOL_SIZE), 0
    start, _random_used = _random_used, _random_used + nbytes
    return int.from_bytes(_random_pool[start:_random_used], "big")


def new_event_id() -> str:
    """A UUIDv7 (RFC 9562): ids sort by creation time, monotonic within this process."""
    global _id_last_ms, _id_counter
    with _id_lock:
        ms = time.time_ns() // 1_000_000
        if ms > _id_last_ms:
            _id_last_ms = ms
            _id_counter = _random_bits(2) & 0x7FF
        else:
            _id_counter += 1
            if _id_counter > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
                _id_last_ms += 1
                _id_counter = 0
            ms = _id_last_ms
        counter = _id_counter
        rand_b = _random_bits(8) & ((1 << 62) - 1)
    h = f"{(ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand_b:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def utc_timestamp(moment: datetime | None = None) -> str:
    """RFC 3339 in UTC with microseconds and ``Z``: ``2026-01-29T10:30:45.123456Z``."""
    moment = datetime.now(UTC) if moment is None else moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"


def to_json_value(value: Any, event_type: str, path: str) -> Any:
    """Convert ``value`` to plain JSON types, deterministically, or raise naming the field.

    Decimal becomes its exact string, an aware datetime UTC RFC 3339 (a naive one its ISO form,
    unchanged), date ISO, Enum its value, tuple a list; nested secret keys are dropped.
    """
    if type(value) in _PLAIN or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EventValidationError(event_type, path, f"{value} is not valid in JSON")
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if type(item) in _PLAIN and type(key) is str and key.lower() not in SECRET_KEYS:
                out[key] = item
                continue
            if not isinstance(key, str):
                raise EventValidationError(
                    event_type, f"{path}[{key!r}]", "keys must be strings to be JSON"
                )
            if key.lower() in SECRET_KEYS:
                continue
            out[key] = to_json_value(item, event_type, f"{path}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [to_json_value(item, event_type, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, Enum):
        return to_json_value(value.value, event_type, path)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise EventValidationError(event_type, path, f"{value} is not valid in JSON")
        return str(value)
    if isinstance(value, datetime):
        return utc_timestamp(value) if value.tzinfo else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise EventValidationError(
        event_type,
        path,
        f"a {type(value).__name__} is not JSON-serializable; pass a str, number, bool, None, "
        "dict, list, tuple, Decimal, datetime, date, Enum or UUID",
    )


@dataclass(frozen=True)
class Envelope:
    """One event, as every transport sends it.

    >>> env = Envelope("order_event", "alice", {"symbol": "SBIN", "action": "BUY"})
    >>> env.to_dict()["user_id"]
    'alice'
    """

    event_type: str
    user_id: str
    data: Mapping[str, Any]
    source: str = "openalgo"
    event_id: str = field(default_factory=new_event_id)
    timestamp: str = field(default_factory=utc_timestamp)
    schema_version: int = SCHEMA_VERSION
    sequence: int | None = None  # per-user sequence stamped by the OpenAlgo bus adapter

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "timestamp": self.timestamp,
            "user_id": self.user_id,
            "source": self.source,
            "schema_version": self.schema_version,
            "data": self.data,
        }
        if self.sequence is not None:
            out["sequence"] = self.sequence
        return out

    @cached_property
    def value(self) -> bytes:
        """The Kafka value: compact UTF-8 JSON, computed once."""
        return compact_json(self.to_dict()).encode()

    @property
    def key(self) -> bytes:
        """The Kafka key: one user's events share a partition, and so keep their order."""
        return self.user_id.encode()

    def headers(self) -> list[tuple[str, bytes]]:
        """CloudEvents binary-mode attributes for the Kafka record."""
        return [
            ("ce_specversion", CLOUDEVENTS_SPEC_VERSION.encode()),
            ("ce_id", self.event_id.encode()),
            ("ce_type", self.event_type.encode()),
            ("ce_source", self.source.encode()),
            ("ce_time", self.timestamp.encode()),
            ("content-type", CONTENT_TYPE.encode()),
        ]

    @classmethod
    def from_json(cls, raw: bytes | str) -> Envelope:
        """Parse a value produced by this package (or by anything that follows the format)."""
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise EventValidationError("envelope", None, f"not JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise EventValidationError("envelope", None, "not a JSON object")
        for key in ("event_type", "timestamp", "user_id", "data"):
            if key not in doc:
                raise EventValidationError("envelope", key, "missing")
        for key in ("event_type", "timestamp", "user_id"):
            if not isinstance(doc[key], str) or not doc[key]:
                raise EventValidationError("envelope", key, "must be a non-empty string")
        if not isinstance(doc["data"], dict):
            raise EventValidationError("envelope", "data", "must be a JSON object")
        sequence = doc.get("sequence")
        return cls(
            event_type=doc["event_type"],
            user_id=doc["user_id"],
            data=doc["data"],
            source=str(doc.get("source", "")),
            event_id=str(doc.get("event_id") or ""),
            timestamp=doc["timestamp"],
            schema_version=int(doc.get("schema_version", SCHEMA_VERSION)),
            sequence=sequence if isinstance(sequence, int) else None,
        )


def parse_timestamp(text: str) -> datetime:
    """Read an envelope timestamp back into an aware UTC datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
