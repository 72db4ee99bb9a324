"""The OpenAlgo bus adapter against a look-alike bus: names, payloads, secrets, users, order."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from openalgo_events import EventPublisher, MemoryTransport
from openalgo_events.integrations.openalgo import TOPICS, attach
from tests.doubles.event_bus import EventBus
from tests.doubles.events import FAKE_API_KEY, TOPIC_FIELDS, sample_events, synthetic

# OPENALGO.md section 3, restated here so the test does not read the table it checks.
LIVE = {
    "order.placed": "order_event", "order.no_action": "order_notification",
    "order.modified": "modify_order_event", "order.cancelled": "cancel_order_event",
    "orders.all_cancelled": "cancel_order_event", "position.closed": "close_position_event",
    "basket.completed": "order_event", "split.completed": "order_event",
    "options.completed": "order_event", "multiorder.completed": "order_event",
    "order.update": "order_update",
    "order.failed": "order_failed", "order.modify_failed": "order_failed",
    "order.cancel_failed": "order_failed", "analyzer.error": "order_failed",
    "sandbox.order_filled": "analyzer_update", "sandbox.auto_squareoff": "analyzer_update",
    "sandbox.t1_settlement": "analyzer_update",
    **{t: "gtt_event" for t in TOPIC_FIELDS if t.startswith("gtt.")},
}
# The keys today's browser payload has for each live event type.
TOAST_KEYS = {
    "order_event": {"symbol", "action", "orderid", "exchange", "price_type", "product_type",
                    "mode"},
    "order_notification": {"symbol", "status", "message"},
    "modify_order_event": {"status", "orderid", "mode"},
    "cancel_order_event": {"status", "orderid", "mode"},
    "close_position_event": {"status", "message", "mode"},
    "gtt_event": {"event", "symbol", "exchange", "trigger_id", "triggered_order_id", "mode"},
    "order_update": {"mode", "broker", "orderid", "symbol", "exchange", "action", "quantity",
                     "price", "trigger_price", "pricetype", "product", "order_status",
                     "filled_quantity", "pending_quantity", "average_price",
                     "rejection_reason"},
    "order_failed": {"operation", "error_message", "mode"},
    "analyzer_update": {"request", "response"},
}


@pytest.fixture
def bus():
    bus = EventBus()
    yield bus
    bus._pool.shutdown(wait=True)


@pytest.fixture
def memory():
    return MemoryTransport()


def _run(bus, events, **attach_kwargs):
    """Attach to ``bus`` on a memory publisher, publish ``events``, return the envelopes."""
    memory = MemoryTransport()
    attachment = attach(bus, EventPublisher(memory), **attach_kwargs)
    for event in events:
        bus.publish(event)
    assert bus.drain()
    attachment.detach()
    return memory.events, attachment


def test_the_table_covers_all_26_topics():
    """The adapter's table has exactly OpenAlgo's 26 topics, mapped as documented."""
    assert len(TOPICS) == 26
    assert {t: r.event_type for t, r in TOPICS.items()} == LIVE


@pytest.mark.parametrize("mode", ["live", "analyze"])
def test_every_topic_lands_as_documented(bus, mode):
    """One synthetic event per topic becomes the documented event type, with today's browser
    payload keys, the event's full fields, its mode and its bus topic."""
    events = [synthetic(topic, mode) for topic in TOPIC_FIELDS]
    envelopes, attachment = _run(bus, events)
    assert attachment.failed == 0
    by_topic = {e.data["bus_topic"]: e for e in envelopes}
    assert set(by_topic) == set(TOPIC_FIELDS)
    for topic, envelope in by_topic.items():
        expected = LIVE[topic] if mode == "live" or topic == "order.update" else "analyzer_update"
        assert envelope.event_type == expected, topic
        data = envelope.data
        assert TOAST_KEYS[expected] <= set(data), (topic, TOAST_KEYS[expected] - set(data))
        assert data["mode"] == mode
        own = {name for name, _ in TOPIC_FIELDS[topic][1]}
        assert own | {"topic", "api_type", "request_data", "response_data"} <= set(data)
        assert "api_key" not in data
        if expected == "analyzer_update":
            assert data["request"] == data["request_data"]
            assert data["response"] == {"status": "success", "mode": mode}


def test_live_payload_values_match_todays_toasts(bus):
    """The computed browser keys carry today's values (price_type from pricetype, the batch
    summary, the all-cancelled count, the GTT event name)."""
    envelopes, _ = _run(bus, [
        synthetic("order.placed", pricetype="LIMIT", product="MIS", orderid="O1"),
        synthetic("orders.all_cancelled", canceled_count=4),
        synthetic("basket.completed", successful=2, total=3),
        synthetic("multiorder.completed", successful_legs=1, failed_legs=1, total=2),
        synthetic("gtt.triggered", triggered_order_id="T9"),
        synthetic("order.no_action", message="nothing to do"),
    ])
    data = {e.data["bus_topic"]: e.data for e in envelopes}
    assert data["order.placed"]["price_type"] == "LIMIT"
    assert data["order.placed"]["product_type"] == "MIS"
    assert data["orders.all_cancelled"]["orderid"] == "4 orders canceled"
    assert data["basket.completed"]["batch_order"] is True
    assert data["basket.completed"]["orderid"] == "basket_2"
    assert data["multiorder.completed"]["multiorder_summary"] is True
    assert data["multiorder.completed"]["failed_legs"] == 1
    assert data["gtt.triggered"]["event"] == "triggered"
    assert data["gtt.triggered"]["triggered_order_id"] == "T9"
    assert data["order.no_action"] == {**data["order.no_action"], "status": "info",
                                       "message": "nothing to do"}


# The browser payload OpenAlgo's subscriber emits for the summary topics (values read from its
# subscribers/socketio_subscriber.py), restated so the test does not read the code it checks.
# Each case: the event's own fields, then the toast keys and values expected in ``data``.
SUMMARY = "__summary__"  # stands for batch_order and is_last_order, both True
TOAST_VALUES = {
    "basket": ("basket.completed", {"strategy": "hedge", "successful": 2, "total": 3}, {
        "symbol": "hedge", "action": "2/3 orders", "orderid": "basket_2", "exchange": "MULTI",
        "price_type": "BASKET", "product_type": "BASKET", SUMMARY: True}),
    "basket, no strategy": ("basket.completed", {"strategy": "", "successful": 0, "total": 2}, {
        "symbol": "Basket", "action": "0/2 orders", "orderid": "basket_0", SUMMARY: True}),
    "split": ("split.completed", {
        "symbol": "SBIN", "action": "BUY", "exchange": "NSE", "pricetype": "LIMIT",
        "product": "CNC", "successful": 4, "total": 5}, {
        "symbol": "SBIN", "action": "BUY", "orderid": "4/5 orders", "exchange": "NSE",
        "price_type": "LIMIT", "product_type": "CNC", SUMMARY: True}),
    "split, empty fields": ("split.completed", {
        "symbol": "", "action": "", "exchange": "", "pricetype": "", "product": "",
        "successful": 1, "total": 1}, {
        "symbol": "Split", "action": "SPLIT", "orderid": "1/1 orders", "exchange": "Unknown",
        "price_type": "MARKET", "product_type": "MIS", SUMMARY: True}),
    "options": ("options.completed", {
        "symbol": "NIFTY30JAN25000CE", "action": "SELL", "exchange": "NFO", "pricetype": "",
        "product": "", "successful": 2, "total": 2}, {
        "symbol": "NIFTY30JAN25000CE", "action": "SELL", "orderid": "2/2 orders",
        "exchange": "NFO", "price_type": "MARKET", "product_type": "MIS", SUMMARY: True}),
    "options, empty symbol": ("options.completed", {
        "symbol": "", "action": "", "exchange": "", "strategy": "s", "successful": 0,
        "total": 1}, {"symbol": "", "action": "", "exchange": "", "orderid": "0/1 orders"}),
    "multiorder": ("multiorder.completed", {
        "strategy": "iron condor", "underlying": "NIFTY", "exchange": "NSE_INDEX",
        "successful_legs": 3, "failed_legs": 1, "total": 4}, {
        "symbol": "NIFTY", "action": "iron condor", "orderid": "3/4 legs",
        "exchange": "NSE_INDEX", "price_type": "MULTI", "product_type": "OPTIONS",
        "multiorder_summary": True, "successful_legs": 3, "failed_legs": 1, SUMMARY: True}),
    "multiorder, no strategy": ("multiorder.completed", {
        "strategy": "", "successful_legs": 0, "failed_legs": 2, "total": 2}, {
        "action": "Multi-Order", "orderid": "0/2 legs"}),
    "cancel all, blocked": ("orders.all_cancelled", {
        "canceled_count": 0, "failed_count": 0,
        "response_data": {"status": "error", "message": "not allowed in Semi-Auto mode"}}, {
        "status": "success", "orderid": "0 orders canceled", "canceled_count": 0,
        "failed_count": 0, SUMMARY: True}),
    "close, failed": ("position.closed", {
        "message": "Failed to close positions",
        "response_data": {"status": "error", "message": "Failed to close positions"}}, {
        "status": "success", "message": "Failed to close positions"}),
    "close, no message": ("position.closed", {"message": ""}, {
        "status": "success", "message": "All Open Positions Squared Off"}),
    "cancel, status as sent": ("order.cancelled", {"orderid": "O7", "status": ""}, {
        "status": "", "orderid": "O7"}),
}


@pytest.mark.parametrize("case", TOAST_VALUES)
def test_summary_toasts_carry_openalgos_values(bus, case):
    """Basket, split, options and multi-order summaries, cancel-all, close-position and cancel
    carry the exact values OpenAlgo's own subscriber emits (its defaults, and "success" even
    for a failed cancel-all or close), so KAFKA mode shows the same toasts; the outcome and
    the counts stay in the event's own fields."""
    topic, fields, toast = TOAST_VALUES[case]
    envelopes, attachment = _run(bus, [synthetic(topic, **fields)])
    assert attachment.failed == 0
    data = envelopes[0].data
    expected = {k: v for k, v in toast.items() if k != SUMMARY}
    if toast.get(SUMMARY):
        expected.update(batch_order=True, is_last_order=True)
    assert {k: data.get(k) for k in expected} == expected
    assert data["mode"] == "live"
    if "response_data" in fields:
        assert data["response_data"]["status"] == "error"


def test_captured_samples_convert(bus):
    """The captured sandbox events become order_update (with the event's user) and
    analyzer_update (request and response as today)."""
    envelopes, attachment = _run(bus, sample_events(), default_user="admin")
    assert attachment.failed == 0
    assert sorted(e.event_type for e in envelopes) == ["analyzer_update"] * 4 + [
        "order_update"] * 2
    updates = [e for e in envelopes if e.event_type == "order_update"]
    assert {e.user_id for e in updates} == {"kafkatest"}
    assert {e.data["order_status"] for e in updates} == {"open", "cancelled"}
    rejected = next(e for e in envelopes if e.data.get("symbol") == "NOSUCH")
    assert rejected.data["response"]["status"] == "error"
    assert rejected.user_id == "admin"


def test_no_secret_in_any_message(bus):
    """Neither the API key nor an apikey field appears anywhere in a produced message, even
    when the key is echoed in an error text."""
    events = [synthetic(t, m) for t in TOPIC_FIELDS for m in ("live", "analyze")]
    events += sample_events()
    events.append(synthetic("order.failed", error_message=f"bad key {FAKE_API_KEY}"))
    envelopes, _ = _run(bus, events)
    assert len(envelopes) == len(events)
    for envelope in envelopes:
        raw = envelope.value.decode()
        assert FAKE_API_KEY not in raw
        assert '"apikey"' not in raw.lower() and '"api_key"' not in raw.lower()
        assert FAKE_API_KEY.encode() not in b"".join(v for _, v in envelope.headers())
        assert envelope.user_id != FAKE_API_KEY


def test_user_comes_from_event_then_resolver_then_default(bus):
    """user_id is request_data's user_id, else the resolver's name for the key (asked once per
    key), else the default user; a failing or key-echoing resolver falls back to the default."""
    asked = []

    def resolver(key):
        asked.append(key)
        return {FAKE_API_KEY: "alice", "echo-key-123456": "echo-key-123456"}.get(key)

    events = [
        synthetic("order.update", request_data={"user_id": "bob"}),
        synthetic("order.placed"), synthetic("order.placed"),
        synthetic("order.placed", api_key="unknown-key-0001"),
        synthetic("order.placed", api_key="echo-key-123456"),
        synthetic("order.placed", api_key=""),
    ]
    envelopes, _ = _run(bus, events, user_resolver=resolver, default_user="owner")
    users = sorted(e.user_id for e in envelopes)
    assert users == ["alice", "alice", "bob", "owner", "owner", "owner"]
    assert asked.count(FAKE_API_KEY) == 1

    def broken(key):
        raise RuntimeError(f"lookup failed for {key}")

    envelopes, _ = _run(bus, [synthetic("order.placed")], user_resolver=broken)
    assert envelopes[0].user_id == "admin"


def test_per_user_sequences_are_gap_free(bus):
    """Events arriving on the bus's 10 threads get per-user sequence numbers 1..N, no gap
    and no repeat."""
    events = [synthetic("order.update", request_data={"user_id": f"u{i % 3}"}, orderid=str(i))
              for i in range(900)]
    envelopes, attachment = _run(bus, events)
    assert bus.stats()["dropped"] == 0 and len(envelopes) == 900
    seen = defaultdict(list)
    for envelope in envelopes:
        seen[envelope.user_id].append(envelope.sequence)
    for user, numbers in seen.items():
        assert sorted(numbers) == list(range(1, len(numbers) + 1)), user
        assert attachment.sequence(user) == len(numbers)
    assert json.loads(envelopes[0].value)["sequence"] >= 1


def test_detach_unsubscribes_every_topic(bus):
    """attach subscribes once per topic; detach removes every subscription."""
    attachment = attach(bus, EventPublisher(MemoryTransport()))
    assert all(bus.subscriber_count(t) == 1 for t in TOPIC_FIELDS)
    attachment.detach()
    assert all(bus.subscriber_count(t) == 0 for t in TOPIC_FIELDS)
