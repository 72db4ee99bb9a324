"""The envelope every event travels in, whatever the transport.

On Kafka the value is the envelope as compact JSON, the key is the user id, and the headers
carry the CloudEvents binary-mode attributes, so a consumer can route without parsing.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

import orjson

from ._threads import new_lock
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
_stdlib_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON of plain JSON values, by orjson (the publish path's largest cost
    otherwise); integers past 64 bits, which orjson refuses, go through the standard library.

    Copied out of orjson's result, which keeps its whole working buffer: a few kilobytes for
    every value the spool holds in memory, by the thousand under load.
    """
    return memoryview(_dumps(value)).tobytes()


def compact_json(value: Any) -> str:
    """``json_bytes`` as text (what SQLite's JSON functions read)."""
    return _dumps(value).decode()


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return _stdlib_json(value).encode()


# A real lock even under eventlet: ids are made on green threads and real OS threads alike.
_id_lock = new_lock()
_id_last_ms = 0
_id_counter = 0
# The random part of ids needs uniqueness, not secrecy: a generator seeded from the OS CSPRNG
# (once per process, again in a forked child) costs a tenth of os.urandom per id.
_id_random = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _id_random.seed(os.urandom(32)))


def new_event_id(now_ns: int | None = None) -> str:
    """A UUIDv7 (RFC 9562): ids sort by creation time, monotonic within this process."""
    global _id_last_ms, _id_counter, _id_prefix
    with _id_lock:
        ms = (time.time_ns() if now_ns is None else now_ns) // 1_000_000
        if ms > _id_last_ms:
            _id_last_ms = ms
            _id_counter = _id_random.getrandbits(11)
        else:
            _id_counter += 1
            if _id_counter > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
                _id_last_ms += 1
                _id_counter = 0
            ms = _id_last_ms
        counter = _id_counter
        if _id_prefix[0] != ms:  # the 48-bit millisecond part, formatted once per millisecond
            _id_prefix = (ms, f"{ms >> 16 & 0xFFFFFFFF:08x}-{ms & 0xFFFF:04x}-")
        prefix = _id_prefix[1]
    # ver 7 + 12-bit counter | variant 0b10 + 14 random bits | 48 random bits, as 20 hex digits
    tail = ((0x7000 | counter) << 64 | 0x8000 << 48 | _id_random.getrandbits(62)).to_bytes(
        10, "big").hex()
    return f"{prefix}{tail[:4]}-{tail[4:8]}-{tail[8:]}"


_id_prefix = (-1, "")


def utc_timestamp(moment: datetime | None = None) -> str:
    """RFC 3339 in UTC with microseconds and ``Z``: ``2026-01-29T10:30:45.123456Z``."""
    if moment is None:
        return ns_timestamp(time.time_ns())
    return moment.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


_second_prefix = (-1, "")  # (unix second, its "YYYY-MM-DDTHH:MM:SS"), replaced as one value


def ns_timestamp(now_ns: int) -> str:
    """``utc_timestamp`` of a ``time.time_ns()`` reading; the date part is formatted once a
    second."""
    global _second_prefix
    second, micros = divmod(now_ns // 1000, 1_000_000)
    cached_second, prefix = _second_prefix
    if second != cached_second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_prefix = (second, prefix)
    return f"{prefix}.{micros:06d}Z"


def to_json_value(value: Any, event_type: str, path: str) -> Any:
    """Convert ``value`` to plain JSON types, deterministically, or raise naming the field.

    Decimal becomes its exact string, an aware datetime UTC RFC 3339 (a naive one its ISO form,
    unchanged), date ISO, Enum its value, tuple a list; nested secret keys are dropped.
    """
    kind = type(value)  # the common types first, by identity: isinstance on an ABC is slow
    if kind in _PLAIN:
        return value
    if kind is float:
        return _finite(value, event_type, path)
    if kind is dict:
        return _json_object(value, event_type, path)
    if isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return _finite(value, event_type, path)
    if isinstance(value, Mapping):
        return _json_object(value, event_type, path)
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


def _finite(value: float, event_type: str, path: str) -> float:
    if not math.isfinite(value):
        raise EventValidationError(event_type, path, f"{value} is not valid in JSON")
    return value


def _json_object(value: Mapping[Any, Any], event_type: str, path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        secret = _secret_keys_seen.get(key) if type(key) is str else None
        if secret is None:
            if not isinstance(key, str):
                raise EventValidationError(
                    event_type, f"{path}[{key!r}]", "keys must be strings to be JSON"
                )
            secret = _is_secret(key)
        if secret:
            continue
        kind = type(item)
        if kind in _PLAIN or (kind is float and math.isfinite(item)):
            out[key] = item
        else:
            out[key] = to_json_value(item, event_type, f"{path}.{key}")
    return out


_secret_keys_seen: dict[str, bool] = {}  # the same few keys come with every event


def _is_secret(key: str) -> bool:
    found = key.lower() in SECRET_KEYS
    if len(_secret_keys_seen) < 4096:  # bounded: keys built from data are not cached forever
        _secret_keys_seen[key] = found
    return found


@dataclass(frozen=True, init=False)
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
    event_id: str = ""
    timestamp: str = ""
    schema_version: int = SCHEMA_VERSION
    sequence: int | None = None  # per-user sequence stamped by the OpenAlgo bus adapter

    def __init__(self, event_type: str, user_id: str, data: Mapping[str, Any],
                 source: str = "openalgo", event_id: str | None = None,
                 timestamp: str | None = None, schema_version: int = SCHEMA_VERSION,
                 sequence: int | None = None) -> None:
        """A new event gets a fresh id and the current time, from one clock reading.

        Written out because a frozen dataclass's generated ``__init__`` makes one
        ``object.__setattr__`` call per field, on every publish.
        """
        if event_id is None or timestamp is None:
            now = time.time_ns()
            event_id = new_event_id(now) if event_id is None else event_id
            timestamp = ns_timestamp(now) if timestamp is None else timestamp
        self.__dict__.update(event_type=event_type, user_id=user_id, data=data, source=source,
                             event_id=event_id, timestamp=timestamp,
                             schema_version=schema_version, sequence=sequence)

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

    @property
    def value(self) -> bytes:
        """The Kafka value: compact UTF-8 JSON, computed once."""
        cached: bytes | None = self.__dict__.get("_value")
        if cached is None:
            cached = self.__dict__["_value"] = json_bytes(self.to_dict())
        return cached

    @property
    def key(self) -> bytes:
        """The Kafka key: one user's events share a partition, and so keep their order."""
        return self.user_id.encode()

    def headers(self) -> list[tuple[str, bytes]]:
        """CloudEvents binary-mode attributes for the Kafka record."""
        return cloudevents_headers(self.event_id, self.event_type, self.source, self.timestamp)

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


def cloudevents_headers(event_id: str, event_type: str, source: str,
                        timestamp: str) -> list[tuple[str, bytes]]:
    return [
        ("ce_specversion", _SPEC_VERSION),
        ("ce_id", event_id.encode()),
        ("ce_type", event_type.encode()),
        ("ce_source", source.encode()),
        ("ce_time", timestamp.encode()),
        ("content-type", _CONTENT_TYPE),
    ]


def headers_of(value: bytes) -> list[tuple[str, bytes]]:
    """The CloudEvents headers of a stored Kafka value (the spool keeps only the value)."""
    doc = orjson.loads(value)
    return cloudevents_headers(str(doc.get("event_id", "")), str(doc.get("event_type", "")),
                               str(doc.get("source", "")), str(doc.get("timestamp", "")))


_SPEC_VERSION = CLOUDEVENTS_SPEC_VERSION.encode()
_CONTENT_TYPE = CONTENT_TYPE.encode()


def parse_timestamp(text: str) -> datetime:
    """Read an envelope timestamp back into an aware UTC datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
