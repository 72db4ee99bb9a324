"""Browsers get only what the catalog lets them: ``password_change``'s IP address and user
agent go to Kafka only, never to a broadcast that every user's browser receives."""

from __future__ import annotations

import pytest
import requests
from flask import Flask
from flask_socketio import SocketIO

from openalgo_events import Settings
from openalgo_events.demo import DemoServer, create_app, demo_state
from openalgo_events.integrations.bridge import KafkaSocketIOBridge
from openalgo_events.publisher import build_publisher
from tests.sio_support import Listener, rooms_by_user
from tests.support import create_topic, envelope_of, read_topic

PERSONAL = {"ip_address": "203.0.113.7", "user_agent": "Mozilla/5.0 (X11; Linux x86_64)"}


@pytest.mark.broker
@pytest.mark.parametrize("transport", ["polling", "websocket"])
def test_password_change_broadcast_reaches_others_without_ip_and_user_agent(
        kafka_bootstrap, topic, tmp_path, transport):
    """In BOTH mode with the broadcast scope, a second user's browser receives bob's
    password_change without his IP address and user agent; the Kafka message carries them."""
    create_topic(kafka_bootstrap, topic, 1)
    app = Flask(__name__)
    socketio = SocketIO(app, async_mode="threading")

    rooms_by_user(socketio)

    settings = Settings.from_env({
        "ORDER_EVENT_MODE": "BOTH", "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_ORDER_EVENTS_TOPIC": topic, "KAFKA_SPOOL_PATH": str(tmp_path / "spool"),
        "ORDER_EVENT_SOCKETIO_SCOPE": "broadcast"})
    publisher = build_publisher(settings, socketio)
    try:
        with DemoServer(app) as server, \
                Listener(server.url, [transport], auth={"user": "carol"}) as carol:
            publisher.publish("password_change", "bob", user="bob", status="success",
                              message="Password changed successfully", **PERSONAL)
            [(_, payload)] = carol.wait(1, "password_change")
            assert payload == {"user": "bob", "status": "success",
                               "message": "Password changed successfully"}
            assert publisher.flush(15) == 0
        [message] = read_topic(kafka_bootstrap, topic, 1)
        data = envelope_of(message)["data"]
        assert {k: data[k] for k in PERSONAL} == PERSONAL
    finally:
        publisher.close(5)


@pytest.mark.broker
def test_bridge_emits_password_change_without_ip_and_user_agent(kafka_bootstrap, topic,
                                                                  tmp_path):
    """KAFKA mode: the bridge re-emits a password_change read from the topic to every browser
    without the IP address and user agent the Kafka message carries."""
    create_topic(kafka_bootstrap, topic, 1)
    app = Flask(__name__)
    socketio = SocketIO(app, async_mode="threading")
    settings = Settings.from_env({
        "ORDER_EVENT_MODE": "KAFKA", "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_ORDER_EVENTS_TOPIC": topic, "KAFKA_SPOOL_PATH": str(tmp_path / "spool")})
    bridge = KafkaSocketIOBridge(settings, socketio).start()
    publisher = build_publisher(settings)
    try:
        assert bridge.ready.wait(30)
        with DemoServer(app) as server, Listener(server.url, ["polling"]) as carol:
            publisher.publish("password_change", "bob", user="bob", status="success",
                              message="Password changed successfully", **PERSONAL)
            [(_, payload)] = carol.wait(1, "password_change", timeout=30)
            assert payload == {"user": "bob", "status": "success",
                               "message": "Password changed successfully"}
        [message] = read_topic(kafka_bootstrap, topic, 1)
        assert {k: envelope_of(message)["data"][k] for k in PERSONAL} == PERSONAL
    finally:
        bridge.stop()
        publisher.close(5)


def test_the_demos_meta_channel_follows_the_user_scope():
    """With ORDER_EVENT_SOCKETIO_SCOPE=user, the reference app's demo_event_meta message of
    alice's password change reaches alice's browser only, and carries the browser payload
    (no IP address, no user agent)."""
    app, _ = create_app(Settings.from_env({"ORDER_EVENT_SOCKETIO_SCOPE": "user"}),
                        api_keys={"key-of-alice": "alice", "key-of-bob": "bob"})
    try:
        with DemoServer(app) as server, \
                Listener(server.url, ["polling"], auth={"apikey": "key-of-alice"}) as alice, \
                Listener(server.url, ["polling"], auth={"apikey": "key-of-bob"}) as bob:
            for key in ("key-of-alice", "key-of-bob"):
                answer = requests.post(f"{server.url}/api/v1/demo/changepassword", timeout=5,
                                       json={"apikey": key, "new_password": "n3w-password"},
                                       headers={"User-Agent": PERSONAL["user_agent"]})
                assert answer.status_code == 200, answer.text
            # Each socket's messages arrive in the order they were sent: bob's own meta
            # comes after anything of alice's that would have reached him.
            [(_, bobs)] = bob.wait(1, "demo_event_meta")
            [(_, alices)] = alice.wait(1, "demo_event_meta")
    finally:
        demo_state(app).close()
    assert bobs["data"] == {"user": "bob", "status": "success",
                            "message": "Password changed successfully"}
    assert alices["data"] == {**bobs["data"], "user": "alice"}
    assert [p["data"]["user"] for _, p in bob.events("demo_event_meta")] == ["bob"]
    assert [p["data"]["user"] for _, p in alice.events("demo_event_meta")] == ["alice"]
