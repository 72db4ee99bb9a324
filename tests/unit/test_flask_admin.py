"""The Flask integration's mode switch: the admin endpoint, the CLI and SIGHUP."""

from __future__ import annotations

import os
import signal
import threading

import pytest
from click.testing import CliRunner
from flask import Flask
from flask_socketio import SocketIO
from werkzeug.serving import make_server

from openalgo_events import EventPublisher, EventPublisherFactory, Settings
from openalgo_events.cli import main
from openalgo_events.config import Mode
from openalgo_events.devbroker import free_port
from openalgo_events.integrations.flask import OpenAlgoEvents
from openalgo_events.testing import MemoryTransport
from openalgo_events.transports.routing import Route, RoutingTransport
from tests.support import wait_for

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def named(name: str) -> MemoryTransport:
    transport = MemoryTransport()
    transport.name = name
    return transport


@pytest.fixture
def app_state(tmp_path):
    """An app whose publisher routes between two memory transports, starting on Socket.IO."""
    def make(token: str = TOKEN, **options):
        settings = Settings.from_env({"ORDER_EVENT_ADMIN_TOKEN": token})
        router = RoutingTransport(Route(Mode.SOCKETIO), socketio=named("socketio"),
                                  kafka_factory=lambda: named("kafka"))
        app = Flask(__name__)
        state = OpenAlgoEvents().init_app(app, settings=settings,
                                          publisher=EventPublisher(router), **options)
        made.append(state)
        return app, state

    made: list = []
    yield make
    for state in made:
        state.close(1)


def test_switch_needs_the_token(app_state):
    """Without a configured token the endpoint is off (404); a wrong token gets 401 and the
    route does not change."""
    app, state = app_state(token="")
    assert app.test_client().post("/openalgo-events/mode", json={"mode": "KAFKA"},
                                  headers=AUTH).status_code == 404
    app, state = app_state()
    client = app.test_client()
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
        response = client.post("/openalgo-events/mode", json={"mode": "KAFKA"}, headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert TOKEN not in response.get_data(as_text=True)
    assert state.route == Route(Mode.SOCKETIO)


@pytest.mark.parametrize("body", [{"mode": "KAFKAA"}, {}, {"mode": "BOTH", "rollout_percent": 101},
                                  {"mode": "BOTH", "rollout_percent": "ten"}, [1]])
def test_bad_requests_get_400_with_the_reason(app_state, body):
    """A bad mode or rollout is refused with a message naming the valid values."""
    app, state = app_state()
    response = app.test_client().post("/openalgo-events/mode", json=body, headers=AUTH)
    assert response.status_code == 400
    assert any(word in response.get_json()["error"] for word in ("SOCKETIO", "0..100"))
    assert state.route == Route(Mode.SOCKETIO)


def test_switch_changes_the_route_at_once(app_state):
    """An authorized switch answers the new and previous route, and the next event follows it."""
    app, state = app_state()
    response = app.test_client().post("/openalgo-events/mode",
                                      json={"mode": "kafka", "rollout_percent": 100},
                                      headers=AUTH)
    assert response.status_code == 200
    assert response.get_json() == {"mode": "KAFKA", "rollout_percent": 100,
                                   "previous": {"mode": "SOCKETIO", "rollout_percent": 100}}
    state.publisher.publish("force_logout", "alice", message="bye")
    assert len(state.publisher.transport.kafka.events) == 1
    assert state.publisher.transport.socketio.events == []
    body = app.test_client().get("/openalgo-events/health").get_json()
    assert (body["mode"], body["rollout_percent"], body["healthy"]) == ("KAFKA", 100, True)


def test_switch_to_kafka_without_brokers_is_refused():
    """Switching to KAFKA when the app has no KAFKA_BOOTSTRAP_SERVERS is a 400 that says so."""
    app = Flask(__name__)
    settings = Settings.from_env({"ORDER_EVENT_ADMIN_TOKEN": TOKEN})
    state = OpenAlgoEvents(app, SocketIO(app, async_mode="threading"), settings).state(app)
    try:
        response = app.test_client().post("/openalgo-events/mode", json={"mode": "KAFKA"},
                                          headers=AUTH)
        assert response.status_code == 400
        assert "KAFKA_BOOTSTRAP_SERVERS" in response.get_json()["error"]
        assert state.route == Route(Mode.SOCKETIO)
    finally:
        state.close(1)
    assert EventPublisherFactory._instance is None


def test_metrics_without_prometheus_client_say_how_to_install(app_state):
    """When prometheus-client is missing, /metrics is a 501 (not implemented here) carrying the
    pip command."""
    app, state = app_state()
    state.registry = None
    response = app.test_client().get("/openalgo-events/metrics")
    assert response.status_code == 501
    assert "pip install 'openalgo-events[metrics]'" in response.get_data(as_text=True)


def test_cli_posts_the_switch(app_state):
    """`openalgo-events mode KAFKA --rollout 10` switches a running app, token from the env."""
    app, state = app_state()
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        runner = CliRunner()
        result = runner.invoke(main, ["mode", "KAFKA", "--rollout", "10", "--url", url],
                               env={"ORDER_EVENT_ADMIN_TOKEN": TOKEN})
        assert result.exit_code == 0, result.output
        assert "mode KAFKA, rollout 10% (was SOCKETIO, 100%)" in result.output
        assert state.route == Route(Mode.KAFKA, 10)
        result = runner.invoke(main, ["mode", "BOTH", "--url", url, "--token", "wrong"])
        assert result.exit_code == 1 and "401" in result.output
        assert TOKEN not in result.output and "wrong" not in result.output
        assert state.route == Route(Mode.KAFKA, 10)
    finally:
        server.shutdown()
        thread.join(5)


def test_sighup_rereads_the_env_file(app_state, tmp_path):
    """SIGHUP re-reads the env file, whose values win over the environment, and switches."""
    env_file = tmp_path / "app.env"
    env_file.write_text("ORDER_EVENT_MODE = 'BOTH'\nKAFKA_ROLLOUT_PERCENT = '25'\n"
                        "KAFKA_BOOTSTRAP_SERVERS = '127.0.0.1:9'\n")
    previous = signal.getsignal(signal.SIGHUP)
    _app, state = app_state(reload_on_sighup=True, env_file=str(env_file))
    os.kill(os.getpid(), signal.SIGHUP)
    wait_for(lambda: state.route == Route(Mode.BOTH, 25), 5, message="the BOTH route")
    env_file.write_text("ORDER_EVENT_MODE = 'NOPE'\n")
    os.kill(os.getpid(), signal.SIGHUP)
    wait_for(lambda: not any(t.name == "openalgo-events-reload" for t in threading.enumerate()),
             5, message="the reload to finish")
    assert state.route == Route(Mode.BOTH, 25)
    state.close(1)
    assert signal.getsignal(signal.SIGHUP) is previous
