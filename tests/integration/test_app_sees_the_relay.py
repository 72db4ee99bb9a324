"""One scrape of the app's port tells the whole story: the app's /metrics carries the relay's
delivery figures, and its health carries the relay's errors with their time, cleared when the
cause is; the relay's own port is the one its setting names. A real broker, a real relay."""

from __future__ import annotations

import json
import urllib.request

import pytest
from confluent_kafka import KafkaError, KafkaException
from flask import Flask
from flask_socketio import SocketIO
from prometheus_client.parser import text_string_to_metric_families

from openalgo_events import Settings
from openalgo_events.devbroker import DevBroker, free_port
from openalgo_events.integrations.flask import OpenAlgoEvents
from tests.integration.relay_support import stop_relays
from tests.support import create_topic, wait_for

pytestmark = pytest.mark.broker


def samples(text: str) -> dict[str, float]:
    """Every sample of an exposition, by name and sorted labels (``name{a=b,...}``)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}"] = sample.value
    return found


def test_the_apps_metrics_carry_the_relays_delivery_figures(kafka_bootstrap, topic, tmp_path,
                                                           monkeypatch):
    """After 25 events are confirmed, the app's /openalgo-events/metrics counts them delivered
    (by event type), has 25 delivery latencies and the relay running, and the relay answers its
    own /health on the port OPENALGO_EVENTS_RELAY_PORT names."""
    create_topic(kafka_bootstrap, topic)
    port = free_port()
    monkeypatch.setenv("OPENALGO_EVENTS_RELAY_PORT", str(port))
    spool = str(tmp_path / "spool")
    settings = Settings.from_env({"ORDER_EVENT_MODE": "KAFKA",
                                  "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                                  "KAFKA_ORDER_EVENTS_TOPIC": topic, "KAFKA_SPOOL_PATH": spool})
    app = Flask(__name__)
    state = OpenAlgoEvents().init_app(app, SocketIO(app, async_mode="threading"), settings)
    try:
        for i in range(25):
            state.publisher.publish_order_event("alice", "SBIN", "BUY", str(i), "live")
        assert state.publisher.flush(30) == 0

        def scraped() -> dict[str, float]:
            return samples(app.test_client().get("/openalgo-events/metrics").get_data(
                as_text=True))

        found = wait_for(lambda: (s := scraped()).get(
            "openalgo_events_delivered_total{event_type=order_event,transport=kafka}") == 25 and s,
            10, message=lambda: f"25 delivered in the app's metrics: {scraped()}")
        assert found["openalgo_events_delivery_latency_seconds_count{}"] == 25
        assert found["openalgo_events_published_total{event_type=order_event,transport=kafka}"] \
            == 25
        assert found["openalgo_events_relay_running{}"] == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
            relay = json.loads(answer.read())
        assert relay["healthy"] and relay["port"] == port
    finally:
        state.close(5)
        stop_relays(spool)


def test_an_error_in_health_has_its_time_and_clears_with_its_cause(topic, tmp_path):
    """The broker gone: health is red with last_error and last_error_at; the broker back: green
    again, and the error gone with its cause (not left behind until the relay restarts)."""
    port = free_port()
    spool = str(tmp_path / "spool")
    broker = DevBroker(port).start()
    create_topic(broker.bootstrap_servers, topic)
    settings = Settings.from_env({"ORDER_EVENT_MODE": "KAFKA",
                                  "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                                  "KAFKA_ORDER_EVENTS_TOPIC": topic, "KAFKA_SPOOL_PATH": spool})
    app = Flask(__name__)
    state = OpenAlgoEvents().init_app(app, SocketIO(app, async_mode="threading"), settings)
    kafka = lambda: state.publisher.health()["transports"]["kafka"]  # noqa: E731
    try:
        state.publisher.publish_order_event("alice", "SBIN", "BUY", "0", "live")
        assert state.publisher.flush(30) == 0
        broker.stop()
        state.publisher.publish_order_event("alice", "SBIN", "BUY", "1", "live")
        red = wait_for(lambda: (h := kafka())["last_error"] and h, 40,
                       message=lambda: f"the outage in health: {kafka()}")
        assert not red["healthy"] and red["last_error_at"].endswith("Z")
        broker = DevBroker(port).start()
        try:
            create_topic(broker.bootstrap_servers, topic)
        except KafkaException as exc:  # the dev broker makes topics on first use: the relay's
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
        assert state.publisher.flush(60) == 0
        green = wait_for(lambda: (h := kafka())["healthy"] and h, 30,
                         message=lambda: f"healthy again: {kafka()}")
        assert green["last_error"] is None and green["last_error_at"] is None
    finally:
        state.close(5)
        stop_relays(spool)
        broker.stop()
