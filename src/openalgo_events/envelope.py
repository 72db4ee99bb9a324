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

# Credentials are recognised by meaning, not by exact name: a key is normalised (lower case,
# without "-", "_", "." and spaces) and is a secret when it contains one of these words. So
# "X-Api-Key", "apiKey", "session_token", "Authorization" and "private_key" are all caught, at
# any depth. docs/security.md lists the rule and why each word is on it.
SECRET_WORDS = ("token", "secret", "passw", "pwd", "apikey", "authorization", "auth", "private",
                "jwt", "session", "cookie", "credential", "totp")
# Normalised keys that contain a secret word but name no credential, each seen in order data:
# an author, an authorised quantity, the active-session list (its entries' ids are dropped),
# and the instrument tokens brokers number contracts by (public, in the master contract).
SECRET_ALLOWED = frozenset({
    "author", "authorname", "authorized", "authorizedquantity", "authorizedqty",
    "sessions", "sessioncount", "tradingsession", "marketsession",
    "symboltoken", "instrumenttoken", "exchangetoken",
})
# The exact names the package has always dropped (kept for importers); every one matches the rule.
SECRET_KEYS = frozenset(
    {
        "apikey", "api_key", "api_secret", "secret", "client_secret",
        "password", "passwd", "old_password", "new_password", "confirm_password",
        "access_token", "auth_token", "refresh_token", "feed_token",
        "totp", "totp_code", "sasl_password",
    }
)
# The deepest nesting ``data`` may have (``data`` itself is level 1): deeper is refused at the
# call, which also turns a container that holds itself (a cycle) into a typed error.
MAX_DEPTH = 32
# Integers JSON consumers can read exactly (Java's long, Go's int64, ClickHouse Int64...).
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
_NORMALISE = str.maketrans("", "", "-_. ")


def is_secret_key(key: str) -> bool:
    """True when ``key`` names a credential by the rule above (``SECRET_WORDS`` minus
    ``SECRET_ALLOWED``), whatever its case or separators."""
    found = _secret_keys_seen.get(key)
    if found is None:
        found = _is_secret(key)
    return found


_PLAIN = frozenset({str, bool, type(None)})  # int is range-checked


def json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON of plain JSON values, by orjson (the publish path's largest cost
    otherwise). Raises ``orjson.JSONEncodeError`` (a ``TypeError``) for what orjson cannot
    write (an integer past 64 bits, a lone surrogate): the publisher refuses those at the call,
    so whatever is stored is what orjson reads back.

    Copied out of orjson's result, which keeps its whole working buffer: a few kilobytes for
    every value the spool holds in memory, by the thousand under load.
    """
    return memoryview(_dumps(value)).tobytes()


def compact_json(value: Any) -> str:
    """``json_bytes`` as text (what SQLite's JSON functions read)."""
    return _dumps(value).decode()


_dumps = orjson.dumps


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


def to_json_value(value: Any, event_type: str, path: str, depth: int = 1) -> Any:
    """Convert ``value`` to plain JSON types, deterministically, or raise naming the field.

    Decimal becomes its exact string, an aware datetime UTC RFC 3339 (a naive one its ISO form,
    unchanged), date ISO, Enum its value, tuple a list; nested secret keys are dropped.
    Raises ``EventValidationError`` (its ``field`` the path, e.g. ``data.legs[2].qty``) for an
    integer outside signed 64 bits, a non-finite number, nesting deeper than ``MAX_DEPTH``
    (or a cycle), a non-string key or a type JSON has no form for. ``depth`` is the nesting
    level of ``value`` (``data`` is 1).
    """
    kind = type(value)  # the common types first, by identity: isinstance on an ABC is slow
    if kind in _PLAIN:
        return value
    if kind is int:
        return _int64(value, event_type, path)
    if kind is float:
        return _finite(value, event_type, path)
    if kind is dict:
        return _json_object(value, event_type, path, depth)
    if isinstance(value, str | bool):
        return value
    if isinstance(value, int):
        return _int64(int(value), event_type, path)
    if isinstance(value, float):
        return _finite(float(value), event_type, path)
    if isinstance(value, Mapping):
        return _json_object(value, event_type, path, depth)
    if isinstance(value, list | tuple):
        if depth > MAX_DEPTH:
            _too_deep(event_type, path)
        return [to_json_value(item, event_type, f"{path}[{i}]", depth + 1)
                for i, item in enumerate(value)]
    if isinstance(value, Enum):
        return to_json_value(value.value, event_type, path, depth)
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


def _int64(value: int, event_type: str, path: str) -> int:
    if INT_MIN <= value <= INT_MAX:
        return value
    raise EventValidationError(
        event_type, path, f"the integer {str(value)[:24]}... is outside the signed 64-bit range "
        "most consumers can read; send it as a string")


def _finite(value: float, event_type: str, path: str) -> float:
    if not math.isfinite(value):
        raise EventValidationError(event_type, path, f"{value} is not valid in JSON")
    return value


def _too_deep(event_type: str, path: str) -> None:
    raise EventValidationError(
        event_type, path, f"nested deeper than {MAX_DEPTH} levels (or a container that holds "
        "itself, a cycle); flatten the data")


def _json_object(value: Mapping[Any, Any], event_type: str, path: str,
                 depth: int) -> dict[str, Any]:
    if depth > MAX_DEPTH:
        _too_deep(event_type, path)
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
        if kind in _PLAIN or (kind is float and math.isfinite(item)) or (
                kind is int and INT_MIN <= item <= INT_MAX):
            out[key] = item
        else:
            out[key] = to_json_value(item, event_type, f"{path}.{key}", depth + 1)
    return out


_secret_keys_seen: dict[str, bool] = {}  # the same few keys come with every event


def _is_secret(key: str) -> bool:
    norm = key.lower().translate(_NORMALISE)
    found = norm not in SECRET_ALLOWED and any(word in norm for word in SECRET_WORDS)
    if len(_secret_keys_seen) < 4096:  # bounded: keys built from data are not cached forever
        _secret_keys_seen[key] = found
    return found


def scrub_secrets(value: Any, depth: int = 0) -> Any:
    """``value`` with every mapping key that names a credential (``is_secret_key``) dropped, at
    any depth; lists and tuples are walked, anything else is returned as is. Nesting past
    ``MAX_DEPTH`` is returned unwalked: the publisher refuses it anyway."""
    if depth > MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        return {k: scrub_secrets(v, depth + 1) for k, v in value.items()
                if not (isinstance(k, str) and is_secret_key(k))}
    if isinstance(value, list | tuple):
        return [scrub_secrets(v, depth + 1) for v in value]
    return value


def unencodable(value: Any, event_type: str, path: str) -> EventValidationError | None:
    """The error naming where ``value`` (plain JSON types) holds text UTF-8 cannot carry (a lone
    surrogate, in a key or a string), or None. Called only after orjson refused a value: it walks
    the whole value, which the publish path cannot afford on every call."""
    def bad(text: str) -> bool:
        try:
            text.encode()
        except UnicodeEncodeError:
            return True
        return False

    if isinstance(value, str):
        return EventValidationError(event_type, path, "invalid Unicode (a lone surrogate); "
                                    "send valid UTF-8 text") if bad(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if bad(key):
                return EventValidationError(event_type, f"{path}[{key!r}]", "key is invalid "
                                            "Unicode (a lone surrogate); send valid UTF-8 text")
            found = unencodable(item, event_type, f"{path}.{key}")
            if found:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = unencodable(item, event_type, f"{path}[{i}]")
            if found:
                return found
    return None


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

    def record_size(self) -> int:
        """``record_size(key, value, headers())`` without building the headers (the publish
        path checks it on every call)."""
        return (_CE_FIXED + len(self.key) + len(self.value) + len(self.event_id)
                + len(self.event_type.encode()) + len(self.source.encode())
                + len(self.timestamp))

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


# Bytes a Kafka record batch of one record adds around its key, value and headers (the v2 batch
# header, 61, and a record's largest varint framing, 26): librdkafka's own estimate
# (rd_kafka_msg_max_wire_size), which it compares with message.max.bytes at produce, as the
# broker compares the batch with the topic's max.message.bytes.
RECORD_FRAMING = 61 + 26
HEADER_FRAMING = 10  # per header: two varint lengths, at most 5 bytes each


def record_size(key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> int:
    """Bytes one record takes on the wire, uncompressed, framing included (an upper bound)."""
    return (RECORD_FRAMING + len(key) + len(value)
            + sum(len(name) + len(data) + HEADER_FRAMING for name, data in headers))


def headers_of(value: bytes) -> list[tuple[str, bytes]]:
    """The CloudEvents headers of a stored Kafka value (the spool keeps only the value)."""
    doc = orjson.loads(value)
    return cloudevents_headers(str(doc.get("event_id", "")), str(doc.get("event_type", "")),
                               str(doc.get("source", "")), str(doc.get("timestamp", "")))


_SPEC_VERSION = CLOUDEVENTS_SPEC_VERSION.encode()
_CONTENT_TYPE = CONTENT_TYPE.encode()
# What every record's CloudEvents headers and framing take besides their four varying values.
_CE_FIXED = record_size(b"", b"", cloudevents_headers("", "", "", ""))


def parse_timestamp(text: str) -> datetime:
    """Read an envelope timestamp back into an aware UTC datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
