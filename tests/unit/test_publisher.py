"""The publisher over the in-memory transport: typed methods, envelopes, limits, failures."""

from __future__ import annotations

import logging

import pytest

from openalgo_events import (
    EventPublisher,
    EventPublisherFactory,
    EventValidationError,
    Settings,
    capture_events,
)
from openalgo_events.testing import MemoryTransport


@pytest.fixture
def memory():
    return MemoryTransport()


def test_typed_methods_build_the_designs_payloads(memory):
    """Each typed method publishes the design's event name and data, extra fields included."""
    p = EventPublisher(memory)
    p.publish_order_event("alice", "SBIN-EQ", "BUY", "ORD1", "live", broker="angel", quantity=1)
    p.publish_analyzer_update("alice", {"symbol": "X"}, {"status": "success"})
    p.publish_order_notification("alice", "INFY", "info", "matched",
                                 notification_type="position_match")
    p.publish_master_contract_download("angel", "success", "done", symbols_count=5000)
    p.publish_password_change("bob", "success", "changed", ip_address="10.0.0.1")
    assert [(e.event_type, e.user_id, dict(e.data)) for e in memory.events] == [
        ("order_event", "alice", {"symbol": "SBIN-EQ", "action": "BUY", "orderid": "ORD1",
                                  "mode": "live", "broker": "angel", "quantity": 1}),
        ("analyzer_update", "alice", {"request": {"symbol": "X"},
                                      "response": {"status": "success"}}),
        ("order_notification", "alice", {"symbol": "INFY", "status": "info", "message": "matched",
                                         "notification_type": "position_match"}),
        ("master_contract_download", "admin", {"broker": "angel", "status": "success",
                                               "message": "done", "symbols_count": 5000}),
        ("password_change", "bob", {"user": "bob", "status": "success", "message": "changed",
                                    "ip_address": "10.0.0.1"}),
    ]
    assert all(e.source == "openalgo" for e in memory.events)


def test_order_event_keeps_todays_key_order(memory):
    """order_event's data starts with today's keys, in today's order."""
    EventPublisher(memory).publish_order_event("a", "S", "BUY", "1", "live", price=1.5)
    assert list(memory.events[0].data) == ["symbol", "action", "orderid", "mode", "price"]


def test_oversized_event_is_rejected_before_sending(memory):
    """A message over the size limit raises at the call and nothing is sent."""
    p = EventPublisher(memory, max_message_bytes=1000)
    with pytest.raises(EventValidationError, match="over the 1000-byte limit"):
        p.publish_order_event("a", "S", "BUY", "1", "live", note="x" * 2000)
    assert memory.events == []


def test_empty_user_is_rejected(memory):
    """An event needs a user id (except system events, which carry their fixed one)."""
    with pytest.raises(EventValidationError) as info:
        EventPublisher(memory).publish_order_event("", "S", "BUY", "1", "live")
    assert info.value.field == "user_id"


def test_transport_failure_is_logged_and_counted_not_raised(caplog):
    """A transport that raises never breaks the caller: the failure is logged with the event id
    and counted."""

    class Broken(MemoryTransport):
        def publish(self, envelope):
            raise OSError("disk gone")

    p = EventPublisher(Broken())
    with caplog.at_level(logging.ERROR, logger="openalgo_events"):
        env = p.publish_order_event("a", "S", "BUY", "1", "live")
    assert env.event_id in caplog.text
    assert p.stats.count("failed", event_type="order_event") == 1


def test_capture_events_intercepts_the_process_publisher():
    """capture_events() lets an application test what it publishes, with no broker."""
    EventPublisherFactory.reset()
    with capture_events() as events:
        EventPublisherFactory.create_publisher().publish_order_event("a", "S", "BUY", "1", "live")
    assert [e.event_type for e in events.events] == ["order_event"]
    assert EventPublisherFactory._instance is None


def test_socketio_mode_without_socketio_instance_says_how_to_fix():
    """SOCKETIO mode needs the app's SocketIO instance; the error says how to pass it."""
    from openalgo_events import ConfigError, build_publisher

    with pytest.raises(ConfigError, match="create_publisher\\(socketio=socketio\\)"):
        build_publisher(Settings.from_env({}))
