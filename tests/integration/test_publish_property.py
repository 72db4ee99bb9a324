"""Property: whatever JSON-like data ``publish`` is given, it either raises
``EventValidationError`` at the call, or the event is delivered to a real broker byte for byte
and a good event published right after it is delivered too (issue 15: no poison pill)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from openalgo_events import EventValidationError, KafkaEventPublisher, Settings
from tests.support import TopicCollector, create_topic, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]

# Text with every code point, lone surrogates included.
ANY_TEXT = st.text(st.characters(blacklist_categories=()), max_size=8)
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT
           | st.decimals(allow_nan=True, allow_infinity=True))
KEYS = ANY_TEXT | st.integers() | st.sampled_from(["token", "apiKey", "symbol", "mode"])
JSONISH = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=12)
EVENT_TYPES = st.sampled_from(["order_event", "analyzer_update", "password_change",
                               "active_sessions_update", "order_update"])
VALID_BASE = {
    "order_event": {"symbol": "S", "action": "BUY", "orderid": "1", "mode": "live"},
    "analyzer_update": {"request": {}, "response": {}},
    "password_change": {"user": "u", "status": "ok", "message": "m"},
    "active_sessions_update": {"count": 1},
    "order_update": {"orderid": "1", "order_status": "open"},
}


@pytest.fixture(scope="module")
def live(kafka_bootstrap, tmp_path_factory):
    """One publisher and a reader of its topic for every example."""
    topic = f"test-property-{id(tmp_path_factory)}"
    create_topic(kafka_bootstrap, topic)
    spool = tmp_path_factory.mktemp("property") / "spool"
    publisher = KafkaEventPublisher(kafka_bootstrap, topic, settings=Settings.from_env(
        {"KAFKA_SPOOL_PATH": str(spool)}, env_file=None))
    collector = TopicCollector(kafka_bootstrap, topic)
    sent: dict[str, bytes] = {}
    yield publisher, collector, sent
    try:
        wait_for(lambda: set(sent) <= set(collector.event_ids()), 60,
                 message="every accepted event on the topic")
        on_topic = {eid: value for eid, (_, _, _, value, _) in
                    zip(collector.event_ids(), collector.messages, strict=True)}
        assert all(on_topic[eid] == value for eid, value in sent.items())
    finally:
        collector.stop()
        publisher.close(5)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(event_type=EVENT_TYPES, fields=st.dictionaries(KEYS, JSONISH, max_size=4),
       user=st.sampled_from(["alice", "bob"]) | ANY_TEXT)
def test_publish_refuses_at_the_call_or_delivers_and_the_next_one_flows(live, event_type,
                                                                         fields, user):
    """Either EventValidationError at the call, or the event and a good one after it are
    acknowledged by the broker (spool empty, nothing set aside), with the bytes published."""
    publisher, _collector, sent = live
    data = {**VALID_BASE[event_type], **fields}
    try:
        envelope = publisher.publish(event_type, user, data)
    except EventValidationError as exc:
        event(f"refused: {exc.problem[:30]}")
        envelope = None
    if envelope is not None:
        event("accepted")
        sent[envelope.event_id] = envelope.value
    good = publisher.publish_order_event("alice", "SBIN", "BUY", "next", "live")
    sent[good.event_id] = good.value
    assert publisher.flush(20) == 0
    health = publisher.health()
    assert health["spool_rejected"] == 0 and health["healthy"], health
