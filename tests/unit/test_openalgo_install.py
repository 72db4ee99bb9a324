"""The zero-edit installer and the gunicorn config module, without a broker."""

from __future__ import annotations

import runpy
import sys
import types

import pytest
from flask import Flask
from flask_socketio import SocketIO

from openalgo_events.integrations import installation
from openalgo_events.integrations.mirror import EmitMirror
from tests.doubles.event_bus import EventBus
from tests.doubles.events import TOPIC_FIELDS


@pytest.fixture
def app_module(monkeypatch):
    monkeypatch.setenv("OPENALGO_EVENTS_RELAY_AUTOSTART", "FALSE")  # no broker in unit tests
    module = types.ModuleType("fake_openalgo")
    module.bus = EventBus()
    module.socketio = SocketIO(Flask(__name__), async_mode="threading")
    monkeypatch.setitem(sys.modules, "fake_openalgo", module)
    return module


def _env(tmp_path, **extra):
    return {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "KAFKA_SPOOL_PATH": str(tmp_path / "s.db"),
            "OPENALGO_EVENTS_BUS": "fake_openalgo:bus",
            "OPENALGO_EVENTS_SOCKETIO": "fake_openalgo.socketio", **extra}


def test_socketio_mode_installs_nothing(app_module, tmp_path):
    """ORDER_EVENT_MODE=SOCKETIO (the rollback switch) leaves the app untouched."""
    assert installation.install(_env(tmp_path, ORDER_EVENT_MODE="SOCKETIO")) is None
    assert app_module.bus.subscriber_count("order.placed") == 0
    assert "emit" not in vars(app_module.socketio)


def test_both_mode_attaches_adapter_and_local_mirror(app_module, tmp_path):
    """BOTH attaches to all 26 topics and mirrors emits while still emitting locally; close()
    undoes both."""
    installed = installation.install(_env(tmp_path, ORDER_EVENT_MODE="BOTH"))
    try:
        assert all(app_module.bus.subscriber_count(t) == 1 for t in TOPIC_FIELDS)
        mirror = vars(app_module.socketio)["emit"]
        assert isinstance(mirror, EmitMirror) and mirror.local
        assert installed.bridge is None
    finally:
        installed.close(0)
    assert app_module.bus.subscriber_count("order.placed") == 0
    assert "emit" not in vars(app_module.socketio)


def test_both_mode_publishes_only_the_rollout_share(app_module, tmp_path):
    """With KAFKA_ROLLOUT_PERCENT in BOTH mode, only users in the share reach the Kafka spool."""
    from openalgo_events.transports.routing import in_rollout

    installed = installation.install(_env(tmp_path, ORDER_EVENT_MODE="BOTH",
                                          KAFKA_ROLLOUT_PERCENT="30"))
    try:
        users = [f"user{i}" for i in range(200)]
        for user in users:
            installed.publisher.publish("force_logout", user, {"message": "bye"})
        kafka = installed.publisher.transport.kafka
        expected = sum(in_rollout(user, 30) for user in users)
        assert kafka.journaled == expected  # handed to the relay process
        assert 0 < expected < len(users)
    finally:
        installed.close(0)


def test_problems_are_logged_not_raised(app_module, tmp_path, caplog):
    """A bad bus path or invalid Kafka settings log an error and leave the app running."""
    assert installation.install(_env(tmp_path, ORDER_EVENT_MODE="BOTH",
                                     OPENALGO_EVENTS_BUS="no_such_module:bus")) is None
    assert installation.install({"ORDER_EVENT_MODE": "KAFKA"}) is None
    assert "no event bus at no_such_module:bus" in caplog.text
    assert "KAFKA_BOOTSTRAP_SERVERS" in caplog.text


def test_gunicorn_module_chains_an_existing_config(tmp_path, monkeypatch):
    """With OPENALGO_EVENTS_GUNICORN_CONFIG, the existing file's settings are kept and its
    post_worker_init runs too."""
    existing = tmp_path / "gunicorn.conf.py"
    existing.write_text("workers = 3\ncalls = []\n"
                        "def post_worker_init(worker):\n    calls.append(worker)\n")
    monkeypatch.setenv("OPENALGO_EVENTS_GUNICORN_CONFIG", str(existing))
    monkeypatch.setenv("ORDER_EVENT_MODE", "SOCKETIO")
    config = runpy.run_module("openalgo_events.integrations.gunicorn")
    assert config["workers"] == 3
    config["post_worker_init"]("worker-1")
    assert config["calls"] == ["worker-1"]
    assert not [k for k in config if not k.startswith("_") and k not in {
        "annotations", "post_worker_init", "worker_exit", "when_ready", "on_exit", "workers",
        "calls"}]
