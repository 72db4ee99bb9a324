"""What an inbound message must pass before a handler sees it.

Each failure is a ``DeadLetterError`` whose reason code lands in the dead-letter header
``dlq_reason``: oversized, malformed, unknown_event_type, invalid_timestamp, stale, expired.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Container, Sequence
from datetime import datetime
from typing import Any

from ..envelope import Envelope, parse_timestamp
from ..errors import EventValidationError
from .handlers import DeadLetterError

Headers = Sequence[tuple[str, bytes | None]]


def parse(value: bytes | None, *, max_bytes: int, known: Container[str]) -> Envelope:
    """The envelope in ``value``, or the reason it cannot be acted on."""
    if value is None or not value:
        raise DeadLetterError("malformed", "the message has no value")
    if len(value) > max_bytes:
        raise DeadLetterError("oversized", f"the message is {len(value)} bytes, over the "
                          f"{max_bytes}-byte limit (ORDER_EVENT_MAX_MESSAGE_BYTES)")
    try:
        envelope = Envelope.from_json(value)
    except EventValidationError as exc:
        raise DeadLetterError("malformed", str(exc)) from None
    if envelope.event_type not in known:
        raise DeadLetterError("unknown_event_type", f"no handler for event_type "
                                                    f"{envelope.event_type!r}")
    return envelope


def check_fresh(envelope: Envelope, value: bytes, *, max_age_seconds: int,
                now: datetime) -> None:
    """Refuse a command older than ``max_age_seconds`` (0: no limit) or past its ``expires_at``
    (in ``data`` or at the top level of the envelope)."""
    sent = _moment(envelope.timestamp, "timestamp")
    age = (now - sent).total_seconds()
    if max_age_seconds and age > max_age_seconds:
        raise DeadLetterError("stale", f"sent {age:.0f}s ago at {envelope.timestamp}, older than "
                                       f"KAFKA_CONSUMER_MAX_AGE_SECONDS={max_age_seconds}")
    expires = envelope.data.get("expires_at")
    if expires is None and b'"expires_at"' in value:
        expires = json.loads(value).get("expires_at")
    if expires is not None and now >= _moment(expires, "expires_at"):
        raise DeadLetterError("expired", f"expired at {expires}")


def _moment(text: Any, name: str) -> datetime:
    try:
        return parse_timestamp(str(text))
    except ValueError:
        raise DeadLetterError("invalid_timestamp", f"{name}={text!r} is not an RFC 3339 "
                              "timestamp such as 2026-01-29T10:30:45Z") from None


def dedupe_key(envelope: Envelope, value: bytes, headers: Headers) -> str:
    """The id duplicates share: the event id, else the CloudEvents ``ce_id`` header, else a
    hash of the value (an exact redelivery)."""
    if envelope.event_id:
        return envelope.event_id
    for key, header in headers:
        if key == "ce_id" and header:
            return header.decode(errors="replace")
    return "sha256:" + hashlib.sha256(value).hexdigest()
