"""Switching SOCKETIO -> KAFKA -> BOTH -> SOCKETIO under load loses and doubles nothing."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
import requests
import socketio
from confluent_kafka import Consumer, TopicPartition
from flask import Flask
from flask_socketio import SocketIO
from werkzeug.serving import make_server

from openalgo_events import Settings
from openalgo_events.devbroker import free_port
from openalgo_events.integrations.flask import OpenAlgoEvents
from tests.support import create_topic, envelope_of, read_topic, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]

TOKEN = "switch-token"
RATE = 100  # events per second
DURATION = 6.0
SWITCHES = [(1.5, "KAFKA"), (3.0, "BOTH"), (4.5, "SOCKETIO")]
PHASES = [{"socketio"}, {"kafka"}, {"socketio", "kafka"}, {"socketio"}]


def topic_size(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    try:
        return int(consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1])
    finally:
        consumer.close()


def test_switch_under_load_loses_and_doubles_nothing(kafka_bootstrap, topic, tmp_path):
    """At 100 events/s through three switches, each event arrives exactly once on every path of
    the route in force when it was published, and the phases change only inside the window of
    each admin request."""
    create_topic(kafka_bootstrap, topic)
    settings = Settings.from_env({
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_ORDER_EVENTS_TOPIC": topic,
        "KAFKA_SPOOL_PATH": str(tmp_path / "spool"), "ORDER_EVENT_ADMIN_TOKEN": TOKEN})
    app = Flask(__name__)
    server_sio = SocketIO(app, async_mode="threading")
    state = OpenAlgoEvents(app, server_sio, settings).state(app)
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    url = f"http://127.0.0.1:{server.server_port}"
    received: list[int] = []
    client = socketio.Client()
    client.on("order_event", lambda data: received.append(int(data["orderid"])))
    published = itertools.count()
    done = [0]  # publishes completed (the next event's number)

    def publish_at_rate() -> None:
        start = time.monotonic()
        for seq in published:
            if seq >= RATE * DURATION:
                return
            time.sleep(max(0.0, start + seq / RATE - time.monotonic()))  # pacing, not waiting
            state.publisher.publish_order_event("alice", "SBIN-EQ", "BUY", str(seq), "live")
            done[0] = seq + 1

    try:
        client.connect(url, transports=["polling"], wait_timeout=10)
        publisher = threading.Thread(target=publish_at_rate)
        started = time.monotonic()
        publisher.start()
        windows = []
        for at, mode in SWITCHES:
            time.sleep(max(0.0, started + at - time.monotonic()))  # the schedule of the switches
            before = done[0]
            response = requests.post(f"{url}/openalgo-events/mode", json={"mode": mode},
                                     headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
            windows.append((before, done[0]))
            assert response.status_code == 200 and response.json()["mode"] == mode
        publisher.join(DURATION + 10)
        total = done[0]
        assert total == RATE * DURATION
        assert state.publisher.flush(20) == 0
        emitted = state.health()["transports"]["socketio"]["emitted"]
        wait_for(lambda: len(received) >= emitted, 20, message="Socket.IO events")
        # As many as the Kafka transport accepted (a watermark read at once may trail the last
        # acknowledged record), or more if the topic holds more (so doubles are seen too).
        accepted = state.publisher.stats.count("published", transport="kafka")
        on_kafka = [int(envelope_of(m)["data"]["orderid"]) for m in read_topic(
            kafka_bootstrap, topic, max(accepted, topic_size(kafka_bootstrap, topic)))]
    finally:
        client.disconnect()
        server.shutdown()
        state.close(5)

    paths: list[set[str]] = [set() for _ in range(total)]
    for name, ids in (("socketio", received), ("kafka", on_kafka)):
        assert len(ids) == len(set(ids)), f"doubled on {name}"
        for seq in ids:
            paths[seq].add(name)
    assert all(paths), f"lost: {[i for i, p in enumerate(paths) if not p]}"
    runs = [(k, len(list(g))) for k, g in itertools.groupby(paths, key=frozenset)]
    assert [set(k) for k, _ in runs] == PHASES, runs
    boundaries = list(itertools.accumulate(n for _, n in runs))[:-1]
    # Events completed before the admin request keep the old route; an event started after the
    # response takes the new one. Event ``after`` (the one publishing while the response came
    # back: ``done`` counts completed publishes) may have read either, so the first event of
    # the new phase is at most ``after + 1``.
    for boundary, (before, after) in zip(boundaries, windows, strict=True):
        assert before <= boundary <= after + 1, (boundaries, windows)
    print(f"\nswitch under load: {total} events, phases {[(sorted(k), n) for k, n in runs]}, "
          f"Socket.IO {len(received)}, Kafka {len(on_kafka)}, lost 0, doubled 0")
