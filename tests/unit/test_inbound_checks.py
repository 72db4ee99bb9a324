"""The checks an inbound message passes before a handler sees it, each failure with its reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from openalgo_events.envelope import Envelope, utc_timestamp
from openalgo_events.inbound import DeadLetterError
from openalgo_events.inbound.checks import check_fresh, dedupe_key, parse

NOW = datetime(2026, 1, 29, 10, 30, tzinfo=UTC)
KNOWN = {"order_acknowledgment"}


def _raw(**overrides: object) -> bytes:
    doc = {"event_id": "e1", "event_type": "order_acknowledgment", "user_id": "alice",
           "timestamp": "2026-01-29T10:29:00Z", "source": "ESB", "data": {"orderid": "O1"}}
    doc.update(overrides)
    return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()


def _reason(call) -> str:
    with pytest.raises(DeadLetterError) as caught:
        call()
    return caught.value.reason


@pytest.mark.parametrize(("value", "reason"), [
    (None, "malformed"),
    (b"", "malformed"),
    (b"{not json", "malformed"),
    (b"[1, 2]", "malformed"),
    (_raw(user_id=None), "malformed"),
    (_raw(data="text"), "malformed"),
    (_raw(event_type="cancel_everything"), "unknown_event_type"),
    (_raw(data={"orderid": "x" * 500}), "oversized"),
])
def test_parse_refuses_with_a_reason(value, reason):
    """Missing value, bad JSON, missing fields, unknown types and oversized messages are each
    refused with their own reason code."""
    assert _reason(lambda: parse(value, max_bytes=400, known=KNOWN)) == reason


def test_parse_accepts_the_design_example_without_event_id():
    """The design's example (no event_id, no source) is a valid inbound message."""
    raw = _raw(event_id=None, source=None)
    envelope = parse(raw, max_bytes=1000, known=KNOWN)
    assert (envelope.event_type, envelope.user_id, envelope.event_id) == (
        "order_acknowledgment", "alice", "")
    assert dedupe_key(envelope, raw, []).startswith("sha256:")
    assert dedupe_key(envelope, raw, [("ce_id", b"abc")]) == "abc"


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"timestamp": utc_timestamp(NOW - timedelta(seconds=301))}, "stale"),
    ({"timestamp": "yesterday"}, "invalid_timestamp"),
    ({"expires_at": "2026-01-29T10:29:59Z"}, "expired"),
    ({"data": {"orderid": "O1", "expires_at": "2026-01-29T10:30:00Z"}}, "expired"),
])
def test_old_or_expired_commands_are_refused(overrides, reason):
    """A command older than the maximum age, or at or past its expires_at (top level or in
    data), is refused."""
    raw = _raw(**overrides)
    envelope = Envelope.from_json(raw)
    assert _reason(lambda: check_fresh(envelope, raw, max_age_seconds=300, now=NOW)) == reason


def test_fresh_commands_and_no_age_limit_pass():
    """A recent command passes; with a maximum age of 0 an old one passes too."""
    raw = _raw(expires_at="2026-01-29T10:31:00Z")
    check_fresh(Envelope.from_json(raw), raw, max_age_seconds=300, now=NOW)
    old = _raw(timestamp="2020-01-01T00:00:00Z")
    check_fresh(Envelope.from_json(old), old, max_age_seconds=0, now=NOW)
