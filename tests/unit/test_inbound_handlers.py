"""Handler registration and the built-in handlers' validation and notifications."""

from __future__ import annotations

import pytest

from openalgo_events import Settings
from openalgo_events.envelope import Envelope
from openalgo_events.inbound import DeadLetterError, EsbConsumer, HandlerContext, handler
from openalgo_events.inbound.handlers import APP_HANDLERS, BUILTIN_HANDLERS
from openalgo_events.testing import MemoryTransport

SETTINGS = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"})


def _context(notifier=None, publisher=None) -> HandlerContext:
    return HandlerContext(SETTINGS, publisher, notifier, "t", 0, 0, 1)


def _call(event_type: str, data: dict, **context) -> None:
    BUILTIN_HANDLERS[event_type](Envelope(event_type, "alice", data, source="ESB"),
                                 _context(**context))


def test_own_handlers_win_over_decorated_and_built_in_ones():
    """A consumer's own handler beats an @handler one, which beats the built-in."""
    def app(envelope, context):
        pass

    def own(envelope, context):
        pass

    handler("order_acknowledgment")(app)
    try:
        consumer = EsbConsumer(SETTINGS)
        assert consumer.handlers["order_acknowledgment"] is app
        consumer.register("order_acknowledgment", own)
        assert consumer.handlers["order_acknowledgment"] is own
        assert EsbConsumer(SETTINGS).handlers["order_acknowledgment"] is app
    finally:
        del APP_HANDLERS["order_acknowledgment"]
    assert EsbConsumer(SETTINGS).handlers["order_acknowledgment"] is (
        BUILTIN_HANDLERS["order_acknowledgment"])


def test_acknowledgment_becomes_an_order_notification():
    """An acknowledgment is emitted to the user as order_notification with the design's fields."""
    notifier = MemoryTransport()
    _call("order_acknowledgment", {"orderid": "O1", "status": "acknowledged", "source": "ESB",
                                   "message": "received"}, notifier=notifier)
    [sent] = notifier.events
    assert (sent.event_type, sent.user_id) == ("order_notification", "alice")
    assert sent.data == {"status": "acknowledged", "message": "received", "orderid": "O1",
                         "source": "ESB"}


@pytest.mark.parametrize(("event_type", "data", "reason"), [
    ("order_acknowledgment", {"status": "acknowledged"}, "invalid_data"),
    ("order_rejection", {"orderid": "O1"}, "invalid_data"),
    ("replay_request", {}, "invalid_data"),
    ("replay_request", {"since": "last tuesday"}, "invalid_data"),
    ("replay_request", {"since": "2026-01-29T10:00:00Z", "event_types": "order_event"},
     "invalid_data"),
    ("replay_request", {"since": "2026-01-29T10:00:00Z"}, "no_trail"),
    ("position_reconciliation", {"positions": "none"}, "invalid_data"),
    ("position_reconciliation", {"positions": []}, "unhandled"),
])
def test_built_ins_refuse_what_no_retry_can_fix(event_type, data, reason):
    """Invalid data, a replay with no trail and an unclaimed reconciliation are dead-lettered
    at once (DeadLetterError), not retried."""
    with pytest.raises(DeadLetterError) as caught:
        _call(event_type, data)
    assert caught.value.reason == reason


def test_position_reconciliation_goes_to_the_registered_callback():
    """on_position_reconciliation's callback gets the user id and the positions list."""
    got = []
    consumer = EsbConsumer(SETTINGS)
    consumer.on_position_reconciliation(lambda user, positions: got.append((user, positions)))
    positions = [{"symbol": "SBIN-EQ", "exchange": "NSE", "product": "MIS", "quantity": 10}]
    consumer.handlers["position_reconciliation"](
        Envelope("position_reconciliation", "alice", {"positions": positions}), _context())
    assert got == [("alice", positions)]
