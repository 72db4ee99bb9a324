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


@pytest.fixture
def served(app_state):
    """An app on a real port whose mode endpoint takes TOKEN; returns (url, state)."""
    app, state = app_state()
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", state
    server.shutdown()
    thread.join(5)


def test_a_missing_token_and_a_wrong_one_are_told_apart(app_state):
    """No Authorization header is answered 'no admin token was sent', a header that is not a
    bearer token 'send ... as Bearer', and a wrong token 'is not this app's token': each 401,
    none echoing what was sent."""
    app, state = app_state()
    client = app.test_client()
    answers = {}
    for name, headers in (("none", {}), ("basic", {"Authorization": "Basic dXNlcg=="}),
                          ("wrong", {"Authorization": "Bearer nope-not-it"})):
        response = client.post("/openalgo-events/mode", json={"mode": "KAFKA"}, headers=headers)
        assert response.status_code == 401
        answers[name] = response.get_json()["error"]
    assert answers == {
        "none": "no admin token was sent; send it as 'Authorization: Bearer <token>'",
        "basic": "the Authorization header is not a bearer token; send the admin token as "
                 "'Authorization: Bearer <token>'",
        "wrong": "the admin token sent is not this app's ORDER_EVENT_ADMIN_TOKEN"}
    assert state.route == Route(Mode.SOCKETIO)


def test_cli_with_a_wrong_token_says_it_is_wrong(served, cli_env):
    """`mode` with a token the app does not have says the token is wrong and where the right one
    comes from, never that none was sent, and prints neither token."""
    url, state = served
    result = CliRunner().invoke(main, ["mode", "KAFKA", "--url", url, "--token", "n0t-the-one"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: {url}/openalgo-events/mode answered 401: the admin token sent is not this "
        "app's ORDER_EVENT_ADMIN_TOKEN; give mode the app's token (--token, "
        "ORDER_EVENT_ADMIN_TOKEN in the environment or in .env)")
    assert "n0t-the-one" not in result.output and TOKEN not in result.output
    assert state.route == Route(Mode.SOCKETIO)


def test_cli_reads_the_token_from_the_env_file_as_the_app_does(served, cli_env, tmp_path):
    """With no token in the environment, `mode` takes ORDER_EVENT_ADMIN_TOKEN from .env in the
    current directory (OpenAlgo's `KEY = 'value'` style) or from --env-file; a token set in the
    environment wins over the file; with none anywhere it names all three places."""
    url, state = served
    runner = CliRunner()
    missing = runner.invoke(main, ["mode", "KAFKA", "--url", url])
    assert missing.exit_code == 1
    assert missing.stderr.strip() == (
        "Error: no admin token: set ORDER_EVENT_ADMIN_TOKEN in the environment or in .env "
        "(the app's; --env-file names another), or pass --token")
    (tmp_path / ".env").write_text(f"ORDER_EVENT_ADMIN_TOKEN = '{TOKEN}'\n")
    result = runner.invoke(main, ["mode", "KAFKA", "--url", url])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "mode KAFKA, rollout 100% (was SOCKETIO, 100%)"
    (tmp_path / ".env").rename(tmp_path / "openalgo.env")
    result = runner.invoke(main, ["--env-file", "openalgo.env", "mode", "BOTH", "--url", url])
    assert result.exit_code == 0, result.output
    cli_env(ORDER_EVENT_ADMIN_TOKEN="set-in-the-environment")
    result = runner.invoke(main, ["--env-file", "openalgo.env", "mode", "SOCKETIO",
                                  "--url", url])
    assert result.exit_code == 1 and "answered 401" in result.stderr
    assert state.route == Route(Mode.BOTH)
