"""Helpers for the inbound consumer's broker tests: settings, ESB messages, a Socket.IO server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from openalgo_events import Settings
from openalgo_events.devbroker import free_port
from openalgo_events.envelope import new_event_id, utc_timestamp


def consumer_settings(bootstrap: str, topic: str, tmp_path: Path, **env: str) -> Settings:
    """Settings for a consumer of ``topic`` with its own group, state file and fast retries; its
    dead-letter topic is created (the cluster does not auto-create topics)."""
    from tests.support import ensure_topic

    settings = Settings.from_env({
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_ESB_EVENTS_TOPIC": topic,
        "KAFKA_CONSUMER_GROUP": f"group-{uuid.uuid4().hex[:8]}",
        "KAFKA_CONSUMER_AUTO_OFFSET_RESET": "earliest",
        "KAFKA_CONSUMER_STATE_PATH": str(tmp_path / "consumer-state.db"),
        "KAFKA_CONSUMER_RETRY_BACKOFF_MS": "10",
        "KAFKA_CONSUMER_MAX_ATTEMPTS": "3",
        **env,
    })
    ensure_topic(bootstrap, settings.dlq_topic)
    return settings


def esb_message(event_type: str, user_id: str, data: dict[str, Any], *,
                age_seconds: float = 0, **top: Any) -> dict[str, Any]:
    """An ESB envelope as the documented format has it."""
    sent = datetime.now(UTC) - timedelta(seconds=age_seconds)
    return {"event_id": new_event_id(), "event_type": event_type,
            "timestamp": utc_timestamp(sent), "user_id": user_id, "source": "ESB",
            "data": data, **top}


def produce(bootstrap: str, topic: str, *messages: dict[str, Any] | bytes) -> None:
    """Produce messages (dicts as JSON, bytes as they are), keyed by user, and wait for acks."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    failures: list[Any] = []
    for message in messages:
        if isinstance(message, dict):
            value, key = json.dumps(message).encode(), str(message.get("user_id", "")).encode()
        else:
            value, key = message, b"raw"
        producer.produce(topic, value, key,
                         on_delivery=lambda err, _m: err and failures.append(err))
    assert producer.flush(15) == 0 and not failures, failures


@contextmanager
def socketio_server() -> Iterator[tuple[Any, str]]:
    """A Flask-SocketIO server (threading mode) on a free loopback port; yields (socketio, url).

    A client that connects with ``auth={"user": name}`` joins that user's room.
    """
    from flask import Flask
    from flask_socketio import SocketIO, join_room
    from werkzeug.serving import make_server

    from openalgo_events._threads import start_thread
    from openalgo_events.transports.socketio import user_room

    app = Flask(__name__)
    socketio = SocketIO(app, async_mode="threading")

    def on_connect(auth: Any = None) -> None:
        if auth and auth.get("user"):
            join_room(user_room(auth["user"]))

    socketio.on_event("connect", on_connect)
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    start_thread(server.serve_forever, "test-socketio-server")
    try:
        yield socketio, f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
