"""Prometheus metrics and logs of the Flask integration, against a real broker."""

from __future__ import annotations

import logging

import pytest
from flask import Flask
from flask_socketio import SocketIO
from prometheus_client.parser import text_string_to_metric_families

from openalgo_events import EventPublisherFactory, Settings
from openalgo_events.integrations.flask import OpenAlgoEvents
from tests.support import create_topic, wait_for

pytestmark = pytest.mark.broker

SASL_PASSWORD = "sasl-pw-do-not-leak-4821"
API_KEY = "apikey-do-not-leak-9377"


@pytest.fixture
def make_app(tmp_path):
    """Builds Flask apps with the extension on a Socket.IO server; closes them afterwards."""
    states = []

    def make(**env: str):
        settings = Settings.from_env({"KAFKA_SPOOL_PATH": str(tmp_path / "spool"), **env})
        app = Flask(__name__)
        socketio = SocketIO(app, async_mode="threading")
        states.append(OpenAlgoEvents().init_app(app, socketio, settings))
        return app, states[-1]

    yield make
    for state in states:
        state.close(5)
    assert EventPublisherFactory._instance is None


def scrape(app: Flask) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Samples of /metrics by name, then by sorted labels."""
    response = app.test_client().get("/openalgo-events/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def relay_scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Samples of the relay process's /metrics on loopback."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_counters_move_by_event_type_and_transport(make_app, kafka_bootstrap, topic):
    """Publishing in BOTH mode moves published and delivered for the right event type on each
    transport, and fills the latency histograms and the gauges."""
    create_topic(kafka_bootstrap, topic)
    app, state = make_app(ORDER_EVENT_MODE="BOTH", KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
                          KAFKA_ORDER_EVENTS_TOPIC=topic)
    before = scrape(app)
    assert before["openalgo_events_mode"][(("mode", "BOTH"),)] == 1
    assert before["openalgo_events_mode"][(("mode", "SOCKETIO"),)] == 0
    for i in range(7):
        state.publisher.publish_order_event("alice", "SBIN-EQ", "BUY", str(i), "live")
    for _ in range(3):
        state.publisher.publish("force_logout", "alice", message="bye")
    assert state.publisher.flush(20) == 0

    after = scrape(app)
    published = after["openalgo_events_published_total"]
    delivered = after["openalgo_events_delivered_total"]
    for transport in ("kafka", "socketio"):
        order = (("event_type", "order_event"), ("transport", transport))
        logout = (("event_type", "force_logout"), ("transport", transport))
        assert published[order] == 7 and published[logout] == 3
    # Socket.IO delivers in the app; Kafka deliveries are counted by the relay process, on its
    # own /metrics (its port is in the app's health).
    order = (("event_type", "order_event"), ("transport", "socketio"))
    wait_for(lambda: scrape(app)["openalgo_events_delivered_total"].get(order) == 7, 10,
             message="socketio deliveries")
    port = state.health()["transports"]["kafka"]["relay_port"]
    relay = relay_scrape(port)
    assert relay["openalgo_events_delivered_total"][
        (("event_type", "order_event"), ("transport", "kafka"))] == 7
    assert relay["openalgo_events_delivery_latency_seconds_count"][()] == 10
    assert delivered.get((("event_type", "order_event"), ("transport", "routing"))) is None
    assert after["openalgo_events_publish_latency_seconds_count"][()] == 10
    assert after["openalgo_events_publish_latency_seconds_bucket"][(("le", "+Inf"),)] == 10
    assert after["openalgo_events_spool_depth"][()] == 0
    assert after["openalgo_events_spool_oldest_pending_age_seconds"][()] == 0
    assert after["openalgo_events_broker_reachable"][()] == 1
    assert "openalgo_events_failed_total" not in after or not after["openalgo_events_failed_total"]


def test_metrics_in_socketio_mode_have_no_kafka_gauges(make_app):
    """Without Kafka the scrape works, counts Socket.IO, and has no spool gauges."""
    app, state = make_app()
    state.publisher.publish("force_logout", "bob", message="bye")
    samples = scrape(app)
    key = (("event_type", "force_logout"), ("transport", "socketio"))
    assert samples["openalgo_events_published_total"][key] == 1
    assert "openalgo_events_spool_depth" not in samples


def test_logs_name_the_event_and_never_a_secret(make_app, kafka_bootstrap, topic, caplog):
    """One debug line per published event carries its id; no SASL password or nested API key
    shows in any log line, in /health or in /metrics, even when SASL fails."""
    caplog.set_level(logging.DEBUG, logger="openalgo_events")
    app, state = make_app(
        ORDER_EVENT_MODE="BOTH", KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        KAFKA_ORDER_EVENTS_TOPIC=topic, KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        KAFKA_SASL_MECHANISM="PLAIN", KAFKA_SASL_USERNAME="svc", KAFKA_SASL_PASSWORD=SASL_PASSWORD,
        ORDER_EVENT_ADMIN_TOKEN="admin-token-do-not-leak")
    envelope = state.publisher.publish_analyzer_update(
        "alice", {"symbol": "SBIN-EQ", "apikey": API_KEY}, {"status": "error"})
    lines = wait_for(lambda: [r.getMessage() for r in caplog.records
                              if envelope.event_id in r.getMessage()], 5, message="debug line")
    assert any(r.levelno == logging.DEBUG and envelope.event_id in r.getMessage()
               for r in caplog.records), lines
    client = app.test_client()
    client.post("/openalgo-events/mode", json={"mode": "KAFKA"},
                headers={"Authorization": "Bearer wrong"})
    wait_for(lambda: state.health()["last_error"], 15, message="a SASL/connection error")
    outputs = [client.get("/openalgo-events/health").get_data(as_text=True),
               client.get("/openalgo-events/metrics").get_data(as_text=True)]
    outputs += [r.getMessage() + (r.exc_text or "") for r in caplog.records]
    for secret in (SASL_PASSWORD, API_KEY, "admin-token-do-not-leak"):
        assert not [o for o in outputs if secret in o], secret


class BrokenTransport:
    """A transport whose publish always raises, as a misbehaving one would."""

    name = "broken"

    def publish(self, envelope):
        raise OSError("disk on fire")

    def flush(self, timeout=0):
        return 0

    def close(self, timeout=0):
        return 0

    def health(self):
        return {"transport": self.name, "healthy": False}


def test_a_failed_publish_is_one_error_line_with_the_event_id(caplog):
    """A transport failure is logged once at error with the event id, counted in failed_total,
    and never raised into the caller."""
    from openalgo_events import EventPublisher

    app = Flask(__name__)
    state = OpenAlgoEvents(app, publisher=EventPublisher(BrokenTransport()),
                           settings=Settings.from_env({})).state(app)
    envelope = state.publisher.publish("force_logout", "alice", message="bye")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and envelope.event_id in errors[0].getMessage()
    samples = scrape(app)
    assert samples["openalgo_events_failed_total"][
        (("event_type", "force_logout"), ("transport", "publish"))] == 1
    assert app.test_client().get("/openalgo-events/health").status_code == 503
    state.close(1)


def test_consumer_health_and_metrics(make_app, kafka_bootstrap, topic, tmp_path):
    """With KAFKA_CONSUMER_ENABLED the consumer runs in the app: its health is in /health and a
    malformed inbound message shows as openalgo_events_dlq_total, with lag per partition."""
    from confluent_kafka import Producer

    create_topic(kafka_bootstrap, topic)
    create_topic(kafka_bootstrap, f"{topic}.dlq")  # the dead-letter topic (no auto-create)
    app, state = make_app(
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, KAFKA_CONSUMER_ENABLED="TRUE",
        KAFKA_ESB_EVENTS_TOPIC=topic, KAFKA_CONSUMER_GROUP=f"g-{topic}",
        KAFKA_CONSUMER_AUTO_OFFSET_RESET="earliest",
        KAFKA_CONSUMER_STATE_PATH=str(tmp_path / "handled.db"))
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, b"not json", b"alice")
    producer.flush(10)
    wait_for(lambda: state.consumer.health()["dead_lettered"] == 1, 30, message="dead letter")
    body = app.test_client().get("/openalgo-events/health").get_json()
    assert body["consumer"]["dead_lettered"] == 1 and body["consumer"]["running"]
    samples = wait_for(lambda: (s := scrape(app)).get("openalgo_events_consumer_lag") and s,
                       15, message="lag measured")
    assert samples["openalgo_events_dlq_total"][()] == 1
    assert (("partition", "0"),) in samples["openalgo_events_consumer_lag"]
