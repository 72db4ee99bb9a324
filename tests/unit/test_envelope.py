"""The envelope: ids, timestamps, JSON conversion, headers, parsing."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum

import pytest

from openalgo_events import Envelope, EventValidationError
from openalgo_events.envelope import new_event_id, parse_timestamp, to_json_value, utc_timestamp


class Side(Enum):
    BUY = "BUY"


def test_event_ids_are_uuid7_and_sort_by_creation():
    """Event ids are version-7 UUIDs, unique, and sort in creation order."""
    ids = [new_event_id() for _ in range(5000)]
    assert all(uuid.UUID(i).version == 7 for i in ids)
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


def test_timestamp_is_rfc3339_utc_with_microseconds():
    """Timestamps are UTC, with microseconds and a Z suffix, and read back exactly."""
    ist = timezone(timedelta(hours=5, minutes=30))
    moment = datetime(2026, 1, 29, 16, 0, 45, 123456, tzinfo=ist)
    text = utc_timestamp(moment)
    assert text == "2026-01-29T10:30:45.123456Z"
    assert parse_timestamp(text) == moment


def test_values_convert_deterministically():
    """Decimal, datetimes, dates, Enums and tuples become the same JSON every time."""
    data = {
        "price": Decimal("850.50"),
        "at": datetime(2026, 1, 29, 10, 30, tzinfo=UTC),
        "naive": datetime(2026, 1, 29, 10, 30),
        "day": date(2026, 1, 29),
        "side": Side.BUY,
        "legs": (1, 2),
        "nested": {"ok": [Decimal("1.0")]},
    }
    assert to_json_value(data, "t", "data") == {
        "price": "850.50",
        "at": "2026-01-29T10:30:00.000000Z",
        "naive": "2026-01-29T10:30:00",
        "day": "2026-01-29",
        "side": "BUY",
        "legs": [1, 2],
        "nested": {"ok": ["1.0"]},
    }


@pytest.mark.parametrize(
    ("value", "path"),
    [({"x": {1, 2}}, "data.x"), ({"x": float("nan")}, "data.x"), ({"x": [b"raw"]}, "data.x[0]"),
     ({"x": {1: "a"}}, "data.x[1]")],
)
def test_unserializable_values_name_the_field(value, path):
    """A value JSON cannot carry is rejected with the path of the field."""
    with pytest.raises(EventValidationError) as info:
        to_json_value(value, "order_event", "data")
    assert info.value.field == path
    assert path in str(info.value)


def test_nested_secrets_are_dropped():
    """Credentials nested in request data never survive conversion, whatever their case."""
    data = {"request": {"apikey": "k", "APIKEY": "k", "symbol": "SBIN", "inner": {"password": "p"}}}
    for _ in range(2):  # the second time the keys' verdicts come from the cache
        assert to_json_value(data, "analyzer_update", "data") == {
            "request": {"symbol": "SBIN", "inner": {}}
        }


def test_kafka_value_key_and_cloudevents_headers():
    """The value is compact JSON of the documented keys, the key the user, headers CloudEvents."""
    env = Envelope("order_event", "alice", {"symbol": "SBIN"})
    value = json.loads(env.value)
    assert value == {"event_id": env.event_id, "event_type": "order_event",
                     "timestamp": env.timestamp, "user_id": "alice", "source": "openalgo",
                     "schema_version": 1, "data": {"symbol": "SBIN"}}
    assert b" " not in env.value
    assert env.key == b"alice"
    assert dict(env.headers()) == {
        "ce_specversion": b"1.0", "ce_id": env.event_id.encode(), "ce_type": b"order_event",
        "ce_source": b"openalgo", "ce_time": env.timestamp.encode(),
        "content-type": b"application/json",
    }


def test_from_json_round_trips_and_rejects_bad_input():
    """A produced value parses back to an equal envelope; malformed ones raise typed errors."""
    env = Envelope("order_event", "alice", {"symbol": "SBIN"}, sequence=7)
    assert Envelope.from_json(env.value) == env
    for raw, field in [(b"not json", None), (b"[1]", None), (b'{"event_type": "x"}', "timestamp"),
                       (b'{"event_type":"x","timestamp":"t","user_id":"","data":{}}', "user_id")]:
        with pytest.raises(EventValidationError) as info:
            Envelope.from_json(raw)
        assert info.value.field == field
