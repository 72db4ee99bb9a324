"""Validation at the call: every bad input is an ``EventValidationError`` naming the field, and
the JSON Schemas say what the catalog checks (issue 15, cases 2 and 3)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from openalgo_events import EventPublisher, EventValidationError
from openalgo_events.catalog import CATALOG
from openalgo_events.envelope import MAX_DEPTH
from openalgo_events.schema import data_schema
from openalgo_events.testing import MemoryTransport


@pytest.fixture
def publisher() -> EventPublisher:
    return EventPublisher(MemoryTransport())


def nested(levels: int) -> dict[str, Any]:
    """A dict ``levels`` levels deep (placed in ``data``, its deepest dict is at ``levels + 1``)."""
    inner: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        inner = {"n": inner}
    return inner


def cycle() -> dict[str, Any]:
    loop: dict[str, Any] = {"a": 1}
    loop["self"] = loop
    return loop


def lone_surrogate() -> str:
    return "bad" + chr(0xD800)


# (event type, user id, data, the field the error must name)
BAD: list[tuple[str, Any, Any, str]] = [
    ("order_event", "u", {"symbol": "S", "action": "BUY", "orderid": "1", "mode": "live",
                          "quantity": 10**400}, "data.quantity"),
    ("order_event", "u", {"symbol": "S", "action": "BUY", "orderid": "1", "mode": "live",
                          "quantity": 2**63}, "data.quantity"),
    ("order_event", "u", {"symbol": "S", "action": "BUY", "orderid": "1", "mode": "live",
                          "legs": [{"qty": -(2**63) - 1}]}, "data.legs[0].qty"),
    ("order_event", "u", {"symbol": "S", "action": "BUY", "orderid": "1", "mode": "live",
                          "price": float("nan")}, "data.price"),
    ("order_event", "u", {"symbol": "S", "action": "BUY", "orderid": "1", "mode": "live",
                          "x": [float("-inf")]}, "data.x[0]"),
    ("analyzer_update", "u", {"request": nested(MAX_DEPTH), "response": {}}, "data.request"),
    ("analyzer_update", "u", {"request": cycle(), "response": {}}, "data.request"),
    ("analyzer_update", "u", {"request": {"l": []}, "response": {}}, None),  # filled below
    ("order_event", "u", {"symbol": lone_surrogate(), "action": "BUY", "orderid": "1",
                          "mode": "live"}, "data.symbol"),
    ("order_event", "u", {"symbol": "S", "action": "BUY", "orderid": "1", "mode": "live",
                          lone_surrogate(): "v"}, "data"),
    ("order_event", lone_surrogate(), {"symbol": "S", "action": "BUY", "orderid": "1",
                                       "mode": "live"}, "user_id"),
    ("password_change", "u", {"user": "u", "status": "ok", "message": "m", 1: "x"}, "data[1]"),
    ("order_event", "u", {"symbol": "S", "action": "BUY", "orderid": "1", "mode": "live",
                          ("t",): "x"}, "data[('t',)]"),
    ("order_event", "u", {"symbol": None, "action": "BUY", "orderid": "1", "mode": "live"},
     "symbol"),
    ("order_event", "u", {"symbol": "S", "action": "BUY", "orderid": 7, "mode": "live"},
     "orderid"),
    ("order_event", "u", {"symbol": "S", "action": "BUY", "orderid": "1", "mode": "live",
                          "batch_order": "yes"}, "batch_order"),
    ("active_sessions_update", "u", {"count": True}, "count"),
    ("active_sessions_update", "u", {"count": 1.5}, "count"),
    ("analyzer_update", "u", {"request": [], "response": {}}, "request"),
]
# A list nested past the limit inside an object.
_deep_list: Any = ["x"]
for _ in range(MAX_DEPTH):
    _deep_list = [_deep_list]
BAD[7] = ("analyzer_update", "u", {"request": {"l": _deep_list}, "response": {}}, "data.request.l")


@pytest.mark.parametrize("event_type,user,data,field", BAD,
                         ids=[f"{i}-{case[3]}" for i, case in enumerate(BAD)])
def test_bad_input_is_a_typed_error_naming_the_field(publisher, event_type, user, data, field):
    """Each hole of issue 15 case 3 (and the big integer of case 2) raises EventValidationError
    whose field starts with the offending path, and nothing is sent."""
    with pytest.raises(EventValidationError) as raised:
        publisher.publish(event_type, user, data)
    assert raised.value.field is not None and raised.value.field.startswith(field), raised.value
    assert publisher.transport.events == []  # type: ignore[attr-defined]


def test_typed_method_with_none_symbol_is_refused(publisher):
    """publish_order_event("u", None, ...) fails at the call: the catalog says symbol is a
    string, and so does the shipped JSON Schema."""
    with pytest.raises(EventValidationError, match=r"symbol.*must be a string"):
        publisher.publish_order_event("u", None, "BUY", "1", "live")  # type: ignore[arg-type]
    assert data_schema(CATALOG["order_event"])["properties"]["symbol"]["type"] == "string"


def test_nesting_up_to_the_limit_and_64_bit_integers_pass(publisher):
    """Data exactly MAX_DEPTH deep and integers at both ends of int64 are published intact."""
    data = {"request": nested(MAX_DEPTH - 1), "response": {"lo": -(2**63), "hi": 2**63 - 1}}
    env = publisher.publish("analyzer_update", "u", data)
    assert json.loads(env.value)["data"]["response"] == {"lo": -(2**63), "hi": 2**63 - 1}


def test_every_declared_type_agrees_with_the_schema(publisher):
    """For every catalog field, a value of a type its JSON Schema does not allow is refused and
    one it allows is accepted: validation and the generated schemas come from one declaration."""
    samples = {"string": "s", "number": 1.5, "integer": 3, "boolean": True, "object": {},
               "array": [], "null": None}
    for spec in CATALOG.values():
        schema = data_schema(spec)
        for name, prop in schema["properties"].items():
            allowed = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
            base = {f: samples[_first(schema["properties"][f]["type"])]
                    for f in schema["required"]}
            for json_type, sample in samples.items():
                data = {**base, name: sample}
                ok = json_type in allowed or (json_type == "integer" and "number" in allowed)
                if ok:
                    publisher.publish(spec.name, "u", data)
                else:
                    with pytest.raises(EventValidationError) as raised:
                        publisher.publish(spec.name, "u", data)
                    assert raised.value.field == name


def _first(kind: str | list[str]) -> str:
    return kind if isinstance(kind, str) else kind[0]


def test_record_size_shortcut_matches_the_headers_it_skips(publisher):
    """Envelope.record_size() (the publish path's check) equals record_size over the real
    key, value and CloudEvents headers, non-ASCII type and source included."""
    from openalgo_events.envelope import Envelope, record_size

    for env in (publisher.publish_order_event("alice", "SBIN", "BUY", "1", "live"),
                Envelope("tÿpe", "ünïcode", {"a": "é"}, source="søurce")):
        assert env.record_size() == record_size(env.key, env.value, env.headers())
