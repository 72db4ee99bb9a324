"""The catalog: required fields, secrets, system users, adding a type."""

from __future__ import annotations

import pytest

from openalgo_events import (
    CATALOG,
    EventPublisher,
    EventSpec,
    EventValidationError,
    Field,
    Priority,
)
from openalgo_events.catalog import Catalog
from openalgo_events.testing import MemoryTransport

DESIGN_EVENTS = {
    "order_event": ("symbol", "action", "orderid", "mode"),
    "analyzer_update": ("request", "response"),
    "order_notification": ("symbol", "status", "message"),
    "master_contract_download": ("status", "message"),
    "password_change": ("user", "status", "message"),
}


def test_design_events_and_their_required_fields():
    """The five events of the design are cataloged with the fields it lists."""
    for name, required in DESIGN_EVENTS.items():
        assert CATALOG[name].required == required
    assert CATALOG["order_event"].priority is Priority.CRITICAL
    assert CATALOG["master_contract_download"].priority is Priority.LOW


@pytest.mark.parametrize("name", sorted(DESIGN_EVENTS))
def test_missing_required_field_is_named(name):
    """Leaving out a required field raises at the call, naming that field, and sends nothing."""
    transport = MemoryTransport()
    data = {f: "x" for f in DESIGN_EVENTS[name][1:]}
    with pytest.raises(EventValidationError) as info:
        EventPublisher(transport).publish(name, "alice", data)
    assert info.value.field == DESIGN_EVENTS[name][0]
    assert transport.events == []


def test_password_change_refuses_a_password():
    """A password passed to password_change is refused, never published."""
    transport = MemoryTransport()
    with pytest.raises(EventValidationError, match="secret"):
        EventPublisher(transport).publish_password_change("alice", "success", "ok",
                                                          new_password="hunter2")
    assert transport.events == []


def test_unknown_type_is_refused_and_one_entry_adds_it():
    """An unregistered event type is refused; registering one entry makes it publishable."""
    catalog = Catalog(tuple(CATALOG.values()))
    publisher = EventPublisher(MemoryTransport(), catalog=catalog)
    with pytest.raises(EventValidationError, match="unknown event type"):
        publisher.publish("risk_alert", "alice", {"level": "high"})
    catalog.register(EventSpec("risk_alert", "A risk limit was hit.",
                               (Field("level", required=True),), Priority.CRITICAL))
    assert publisher.publish("risk_alert", "alice", {"level": "high"}).data == {"level": "high"}
