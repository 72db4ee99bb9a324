"""The health endpoint follows the broker: 200, 503 while it is down, 200 once it is back."""

from __future__ import annotations

import pytest
from flask import Flask

from openalgo_events import Settings
from openalgo_events.devbroker import DevBroker
from openalgo_events.integrations.flask import OpenAlgoEvents
from tests.support import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture
def broker():
    """A broker of this test's own, so the test can stop and restart it."""
    own = DevBroker().start()
    yield own
    own.stop()


def test_health_follows_the_broker(broker, topic, tmp_path):
    """Health is 200 with the broker up, 503 (with the pending event counted) once it is
    stopped, and 200 again, spool drained, when a broker returns on the same port."""
    settings = Settings.from_env({
        "ORDER_EVENT_MODE": "KAFKA", "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "KAFKA_ORDER_EVENTS_TOPIC": topic, "KAFKA_SPOOL_PATH": str(tmp_path / "spool"),
        "KAFKA_STALL_TIMEOUT_SECONDS": "2"})
    app = Flask(__name__)
    state = OpenAlgoEvents(app, settings=settings).state(app)
    client = app.test_client()

    def health(status: int):
        response = client.get("/openalgo-events/health")
        return response.get_json() if response.status_code == status else None

    try:
        state.publisher.publish("force_logout", "alice", message="hello")  # starts the relay
        body = wait_for(lambda: (b := health(200)) and b["broker_reachable"]
                        and b["spool_depth"] == 0 and b, 15, message="healthy, broker reached")
        assert body["transports"]["kafka"]["relay_running"] is True
        assert body["mode"] == "KAFKA" and body["rollout_percent"] == 100
        assert body["spool_depth"] == 0 and "consumer" not in body

        broker.stop()
        body = wait_for(lambda: health(503), 20, message="503 after the broker stopped")
        assert body["healthy"] is False and body["broker_reachable"] is False
        assert body["last_error"]
        envelope = state.publisher.publish("force_logout", "alice", message="bye")
        body = wait_for(lambda: (b := health(503)) and b["spool_depth"] == 1 and b, 5,
                        message="still 503, the event counted (by the relay, a moment later)")
        assert body["transports"]["kafka"]["spool_depth"] == 1

        broker.start()
        body = wait_for(lambda: (b := health(200)) and b["spool_depth"] == 0 and b, 40,
                        message="200 and an empty spool after the broker returned")
        assert body["broker_reachable"] is True and body["oldest_pending_age_seconds"] is None
        assert envelope.event_id
    finally:
        state.close(5)
