"""ESB acknowledgements and rejections reach the user's browser as Socket.IO notifications."""

from __future__ import annotations

import pytest
import socketio as socketio_client

from openalgo_events.inbound import EsbConsumer
from tests.integration.inbound_support import (
    consumer_settings,
    esb_message,
    produce,
    socketio_server,
)
from tests.support import create_topic, wait_for

pytestmark = pytest.mark.broker


def _client(url: str, user: str, transport: str) -> tuple[socketio_client.Client, list[dict]]:
    client = socketio_client.Client(reconnection=False)
    received: list[dict] = []
    client.on("order_notification", received.append)
    client.connect(url, auth={"user": user}, transports=[transport], wait_timeout=10)
    return client, received


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_acknowledgement_reaches_the_users_browser(kafka_bootstrap, topic, tmp_path, transport):
    """An order_acknowledgment and an order_rejection published to the ESB topic arrive at the
    user's connected client as order_notification events, and not at another user's client."""
    create_topic(kafka_bootstrap, topic)
    settings = consumer_settings(kafka_bootstrap, topic, tmp_path,
                                 ORDER_EVENT_SOCKETIO_SCOPE="user")
    with socketio_server() as (server, url):
        alice, alice_got = _client(url, "alice", transport)
        bob, bob_got = _client(url, "bob", transport)
        consumer = EsbConsumer(settings, socketio=server).start()
        try:
            produce(kafka_bootstrap, topic,
                    esb_message("order_acknowledgment", "alice",
                                {"orderid": "ORD123456", "status": "acknowledged",
                                 "source": "ESB", "symbol": "SBIN-EQ"}),
                    esb_message("order_rejection", "alice",
                                {"orderid": "ORD123457", "reason": "risk limit exceeded",
                                 "source": "RISK"}))
            wait_for(lambda: len(alice_got) == 2, 30, message="two notifications for alice")
        finally:
            assert consumer.stop()
            alice.disconnect()
            bob.disconnect()
    assert alice_got == [
        {"symbol": "SBIN-EQ", "status": "acknowledged", "orderid": "ORD123456",
         "message": "Order ORD123456 acknowledged by ESB", "source": "ESB"},
        {"status": "rejected", "orderid": "ORD123457", "message": "risk limit exceeded",
         "source": "RISK"},
    ]
    assert bob_got == []
    assert consumer.health()["handled"] == 2


@pytest.mark.slow
def test_acknowledgement_reaches_the_browser_from_an_eventlet_app(kafka_bootstrap, topic,
                                                                  tmp_path):
    """In an eventlet-patched app the consumer's notification reaches a long-polling client
    (as OpenAlgo's front end connects) and the hub never stalls for more than 250 ms."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from openalgo_events.devbroker import free_port, port_open

    create_topic(kafka_bootstrap, topic)
    port = free_port()
    app = Path(__file__).with_name("inbound_eventlet_app.py")
    server = subprocess.Popen([sys.executable, str(app), kafka_bootstrap, topic,
                               str(tmp_path / "state.db"), str(port)],
                              cwd=Path(__file__).parents[2], stdout=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: port_open("127.0.0.1", port), 30, message="the eventlet app")
        client, received = _client(f"http://127.0.0.1:{port}", "alice", "polling")
        produce(kafka_bootstrap, topic, esb_message("order_acknowledgment", "alice",
                                                    {"orderid": "ORD1", "source": "ESB"}))
        wait_for(lambda: received, 30, message="the notification")
        client.disconnect()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            out, _ = server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()  # no stray app left for the next test
            server.communicate()
            raise
    assert received[0]["orderid"] == "ORD1" and received[0]["status"] == "acknowledged"
    worst = float(out.split("worst_tick=")[1])
    assert worst < 0.25, f"the eventlet hub stalled for {worst:.3f}s"
