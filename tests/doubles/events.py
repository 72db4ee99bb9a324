"""OpenAlgo's 26 bus event dataclasses, field for field as OPENALGO.md section 2 lists them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any

SAMPLE_PATH = Path("/work/shared/openalgo/bus_events_sample.jsonl")
FAKE_API_KEY = "oa-live-3f9c2b7e1d4a46c0a8b5e6f7d8c9b0a1"


@dataclass
class BusEvent:
    """The base fields every event carries."""

    topic: str = ""
    mode: str = "live"
    api_type: str = ""
    request_data: dict[str, Any] = field(default_factory=dict)
    response_data: dict[str, Any] = field(default_factory=dict)
    api_key: str = ""


_S, _I, _F, _L = str, int, float, list
TOPIC_FIELDS: dict[str, tuple[str, list[tuple[str, type]]]] = {
    "order.placed": ("OrderPlacedEvent", [
        ("strategy", _S), ("symbol", _S), ("exchange", _S), ("action", _S), ("quantity", _I),
        ("pricetype", _S), ("product", _S), ("orderid", _S)]),
    "order.failed": ("OrderFailedEvent", [
        ("symbol", _S), ("exchange", _S), ("error_message", _S)]),
    "order.no_action": ("OrderNoActionEvent", [
        ("symbol", _S), ("exchange", _S), ("message", _S)]),
    "order.modified": ("OrderModifiedEvent", [("symbol", _S), ("exchange", _S), ("orderid", _S)]),
    "order.modify_failed": ("OrderModifyFailedEvent", [
        ("symbol", _S), ("orderid", _S), ("error_message", _S)]),
    "order.cancelled": ("OrderCancelledEvent", [("orderid", _S), ("status", _S)]),
    "order.cancel_failed": ("OrderCancelFailedEvent", [("orderid", _S), ("error_message", _S)]),
    "order.update": ("OrderUpdateEvent", [
        ("orderid", _S), ("symbol", _S), ("exchange", _S), ("action", _S), ("quantity", _I),
        ("price", _F), ("trigger_price", _F), ("pricetype", _S), ("product", _S),
        ("order_status", _S), ("filled_quantity", _I), ("pending_quantity", _I),
        ("average_price", _F), ("rejection_reason", _S), ("broker", _S)]),
    "orders.all_cancelled": ("AllOrdersCancelledEvent", [
        ("canceled_count", _I), ("failed_count", _I), ("canceled_orders", _L),
        ("failed_cancellations", _L)]),
    "position.closed": ("PositionClosedEvent", [
        ("symbol", _S), ("exchange", _S), ("product", _S), ("orderid", _S), ("message", _S)]),
    "basket.completed": ("BasketCompletedEvent", [
        ("strategy", _S), ("results", _L), ("successful", _I), ("total", _I)]),
    "split.completed": ("SplitCompletedEvent", [
        ("strategy", _S), ("symbol", _S), ("exchange", _S), ("action", _S), ("pricetype", _S),
        ("product", _S), ("total_quantity", _I), ("split_size", _I), ("results", _L),
        ("successful", _I), ("total", _I)]),
    "options.completed": ("OptionsCompletedEvent", [
        ("strategy", _S), ("symbol", _S), ("exchange", _S), ("action", _S), ("pricetype", _S),
        ("product", _S), ("results", _L), ("successful", _I), ("total", _I)]),
    "multiorder.completed": ("MultiOrderCompletedEvent", [
        ("strategy", _S), ("underlying", _S), ("exchange", _S), ("results", _L),
        ("successful_legs", _I), ("failed_legs", _I), ("total", _I)]),
    "analyzer.error": ("AnalyzerErrorEvent", [("error_message", _S)]),
    "sandbox.order_filled": ("SandboxOrderFilledEvent", [
        ("orderid", _S), ("tradeid", _S), ("symbol", _S), ("exchange", _S), ("action", _S),
        ("quantity", _I), ("price", _F), ("product", _S), ("strategy", _S)]),
    "sandbox.auto_squareoff": ("SandboxAutoSquareoffEvent", [
        ("cancelled_orders", _I), ("closed_positions", _I)]),
    "sandbox.t1_settlement": ("SandboxT1SettlementEvent", [
        ("settled_users", _I), ("settled_positions", _I)]),
    "gtt.placed": ("GTTPlacedEvent", [
        ("strategy", _S), ("symbol", _S), ("exchange", _S), ("trigger_type", _S),
        ("trigger_id", _S), ("trigger_prices", _L)]),
    "gtt.failed": ("GTTFailedEvent", [
        ("symbol", _S), ("exchange", _S), ("trigger_type", _S), ("error_message", _S)]),
    "gtt.modified": ("GTTModifiedEvent", [("symbol", _S), ("exchange", _S), ("trigger_id", _S)]),
    "gtt.modify_failed": ("GTTModifyFailedEvent", [
        ("symbol", _S), ("trigger_id", _S), ("error_message", _S)]),
    "gtt.cancelled": ("GTTCancelledEvent", [("trigger_id", _S), ("status", _S)]),
    "gtt.cancel_failed": ("GTTCancelFailedEvent", [("trigger_id", _S), ("error_message", _S)]),
    "gtt.triggered": ("GTTTriggeredEvent", [
        ("symbol", _S), ("exchange", _S), ("trigger_id", _S), ("triggered_order_id", _S)]),
    "gtt.expired": ("GTTExpiredEvent", [("symbol", _S), ("exchange", _S), ("trigger_id", _S)]),
}

_EMPTY: dict[type, Any] = {str: "", int: 0, float: 0.0}


def _make(topic: str, name: str, spec: list[tuple[str, type]]) -> type[BusEvent]:
    own = [(fname, ftype, field(default_factory=list) if ftype is list
            else field(default=_EMPTY[ftype])) for fname, ftype in spec]
    cls = make_dataclass(name, [("topic", str, field(default=topic)), *own], bases=(BusEvent,))
    return cls


EVENT_CLASSES: dict[str, type[BusEvent]] = {
    topic: _make(topic, name, spec) for topic, (name, spec) in TOPIC_FIELDS.items()
}


def synthetic(topic: str, mode: str = "live", api_key: str = FAKE_API_KEY, **values: Any
              ) -> BusEvent:
    """One event of ``topic`` with every field filled, the API key also in request_data
    (as on OpenAlgo's failure paths)."""
    sample: dict[str, Any] = {}
    for fname, ftype in TOPIC_FIELDS[topic][1]:
        sample[fname] = {str: f"{fname}-1", int: 3, float: 101.5,
                         list: [{"symbol": "SBIN", "status": "success"}]}[ftype]
    base = {"mode": mode, "api_type": topic.split(".")[0], "api_key": api_key,
            "request_data": {"apikey": api_key, "symbol": "SBIN", "strategy": "demo"},
            "response_data": {"status": "success", "mode": mode}}
    return EVENT_CLASSES[topic](**{**base, **sample, **values})


def from_record(record: dict[str, Any]) -> BusEvent:
    """A dataclass event from one line of the captured sample (capture-only keys dropped)."""
    cls = EVENT_CLASSES[record["topic"]]
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in record.items() if k in names})


def sample_events(api_key: str = FAKE_API_KEY) -> list[BusEvent]:
    """The captured sandbox events, with a real-looking API key put back where it was."""
    out = []
    for line in SAMPLE_PATH.read_text().splitlines():
        record = json.loads(line)
        if record.get("api_key"):
            record["api_key"] = api_key
        out.append(from_record(record))
    return out
