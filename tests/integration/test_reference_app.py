"""The reference app: each endpoint, shaped like OpenAlgo's, publishes the event OpenAlgo
would, with the same payload; bad input is refused with a clear 400; the API key never
leaves the request; a real Socket.IO client (and, in BOTH mode, Kafka) sees the events."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from openalgo_events import KafkaEventPublisher, Settings
from openalgo_events.demo import DEMO_API_KEY, DemoServer, create_app, demo_state
from openalgo_events.demo.app import SOCKETIO_JS_VAR
from openalgo_events.demo.orders import MATCHED
from openalgo_events.devbroker import port_open
from openalgo_events.testing import capture_events
from tests.sio_support import Listener
from tests.support import create_topic, wait_for

USER = "demo-user"


@pytest.fixture
def app() -> Iterator[Any]:
    """The demo app in SOCKETIO mode (no broker)."""
    app, _ = create_app(Settings.from_env({}))
    yield app
    demo_state(app).close()


@pytest.fixture
def events(app):
    """Everything the app publishes during the test, instead of sending it."""
    with capture_events(demo_state(app).publisher) as memory:
        yield memory


def post(app: Any, path: str, **body: Any) -> Any:
    return app.test_client().post(path, json={"apikey": DEMO_API_KEY, **body},
                                  headers={"User-Agent": "pytest-agent"})


def order(**fields: Any) -> dict[str, Any]:
    return {"symbol": "SBIN", "action": "BUY", "quantity": 5, "exchange": "NSE",
            "pricetype": "MARKET", "product": "MIS", **fields}


def test_live_order_publishes_order_event(app, events):
    """A live placeorder answers with its order id and publishes order_event with
    {symbol, action, orderid, mode} plus exchange, types, broker, quantity and price."""
    response = post(app, "/api/v1/placeorder", **order(symbol="sbin", quantity="5"))
    assert response.status_code == 200
    orderid = response.json["orderid"]
    assert response.json == {"status": "success", "orderid": orderid}
    [event] = events.events
    assert (event.event_type, event.user_id) == ("order_event", USER)
    assert dict(event.data) == {"symbol": "SBIN", "action": "BUY", "orderid": orderid,
                                "mode": "live", "exchange": "NSE", "price_type": "MARKET",
                                "product_type": "MIS", "broker": "demo", "quantity": 5,
                                "price": 0.0}


def test_smart_order_trades_the_difference(app, events):
    """A smart order buys or sells only what brings the position to position_size."""
    post(app, "/api/v1/placesmartorder", **order(quantity=0, position_size=10))
    post(app, "/api/v1/placesmartorder", **order(quantity=0, position_size=4))
    fills = [(e.data["action"], e.data["quantity"]) for e in events.of_type("order_event")]
    assert fills == [("BUY", 10), ("SELL", 6)]
    book = post(app, "/api/v1/positionbook").json["data"]
    assert book == [{"symbol": "SBIN", "quantity": 4, "mode": "live"}]


def test_smart_order_already_matched_publishes_order_notification(app, events):
    """A smart order whose position already matches places nothing and publishes
    order_notification with OpenAlgo's exact message."""
    post(app, "/api/v1/placeorder", **order(quantity=5))
    events.clear()
    response = post(app, "/api/v1/placesmartorder", **order(quantity=5, position_size=5))
    assert response.json == {"status": "success", "message": MATCHED}
    [event] = events.events
    assert event.event_type == "order_notification"
    assert dict(event.data) == {"symbol": "SBIN", "status": "info",
                                "message": "Positions Already Matched. No Action needed.",
                                "notification_type": "position_match"}


def test_analyze_mode_publishes_analyzer_update(app, events):
    """In analyze mode an order publishes analyzer_update {request, response} (no
    order_event) and moves only the sandbox position."""
    response = post(app, "/api/v1/placeorder", **order(mode="analyze", quantity=3))
    orderid = response.json["orderid"]
    assert response.json == {"status": "success", "orderid": orderid, "mode": "analyze"}
    [event] = events.events
    assert event.event_type == "analyzer_update"
    assert dict(event.data) == {
        "request": {"symbol": "SBIN", "action": "BUY", "quantity": 3, "exchange": "NSE",
                    "pricetype": "MARKET", "product": "MIS", "price": 0.0,
                    "strategy": "demo", "api_type": "placeorder"},
        "response": {"status": "success", "orderid": orderid, "mode": "analyze"},
    }
    book = post(app, "/api/v1/positionbook").json["data"]
    assert book == [{"symbol": "SBIN", "quantity": 3, "mode": "analyze"}]


def test_analyze_mode_matched_smart_order_publishes_analyzer_update(app, events):
    """In analyze mode even a matched smart order is an analyzer_update, as in OpenAlgo."""
    post(app, "/api/v1/placesmartorder", **order(mode="analyze", quantity=0, position_size=0))
    [event] = events.events
    assert event.event_type == "analyzer_update"
    assert event.data["request"]["api_type"] == "placesmartorder"
    assert event.data["response"] == {"status": "success", "message": MATCHED,
                                      "mode": "analyze"}


def test_master_contract_download_publishes_counts(app, events):
    """The master-contract download publishes master_contract_download as the system user,
    with symbols_count and download_time_seconds."""
    response = post(app, "/api/v1/demo/mastercontract")
    assert response.status_code == 200
    [event] = events.events
    assert (event.event_type, event.user_id) == ("master_contract_download", "admin")
    assert event.data["status"] == "success"
    assert event.data["broker"] == "demo"
    assert event.data["symbols_count"] == response.json["symbols_count"] > 1000
    assert isinstance(event.data["download_time_seconds"], float)


def test_password_change_publishes_client_details_not_the_password(app, events):
    """A password change publishes password_change with ip_address and user_agent, and the
    password appears nowhere in the event."""
    response = post(app, "/api/v1/demo/changepassword", new_password="s3cret-Pa55word")
    assert response.json == {"status": "success", "message": "Password changed successfully"}
    [event] = events.events
    assert (event.event_type, event.user_id) == ("password_change", USER)
    assert dict(event.data) == {"user": USER, "status": "success",
                                "message": "Password changed successfully",
                                "ip_address": "127.0.0.1", "user_agent": "pytest-agent"}
    assert b"s3cret-Pa55word" not in event.value


def test_api_key_is_never_published(app, events):
    """No event from any endpoint carries the API key, at any depth."""
    post(app, "/api/v1/placeorder", **order())
    post(app, "/api/v1/placeorder", **order(mode="analyze"))
    post(app, "/api/v1/placesmartorder", **order(position_size=5))
    post(app, "/api/v1/demo/mastercontract")
    post(app, "/api/v1/demo/changepassword", new_password="another-password")
    assert len(events.events) == 5
    for event in events.events:
        assert DEMO_API_KEY.encode() not in event.value
        assert "apikey" not in json.dumps(event.to_dict())


@pytest.mark.parametrize(("path", "body", "message"), [
    ("/api/v1/placeorder", order(symbol=None), "symbol is required"),
    ("/api/v1/placeorder", order(symbol="SB IN"), "is not a trading symbol"),
    ("/api/v1/placeorder", order(action="HOLD"), "action must be one of BUY, SELL, not 'HOLD'"),
    ("/api/v1/placeorder", order(action=None), "action is required"),
    ("/api/v1/placeorder", order(quantity="abc"), "quantity must be a whole number"),
    ("/api/v1/placeorder", order(quantity=0), "quantity must be at least 1"),
    ("/api/v1/placeorder", order(price="cheap"), "price must be a number"),
    ("/api/v1/placeorder", order(mode="paper"), "mode must be one of live, analyze"),
    ("/api/v1/placeorder", order(product="XYZ"), "product must be one of MIS, CNC, NRML"),
    ("/api/v1/placesmartorder", order(), "position_size is required"),
    ("/api/v1/demo/changepassword", {"new_password": "short"}, "at least 8 characters"),
])
def test_bad_input_is_refused_with_400(app, events, path, body, message):
    """Bad input answers 400 with OpenAlgo's error shape and a message naming the field,
    and publishes nothing."""
    response = post(app, path, **{k: v for k, v in body.items() if v is not None})
    assert response.status_code == 400
    assert response.json["status"] == "error"
    assert message in response.json["message"]
    assert events.events == []


def test_body_that_is_not_json_is_refused(app, events):
    """A body that is not a JSON object answers 400 saying what is expected."""
    response = app.test_client().post("/api/v1/placeorder", data="symbol=SBIN")
    assert response.status_code == 400
    assert "JSON object" in response.json["message"]
    assert events.events == []


@pytest.mark.parametrize("apikey", [None, "", "wrong-key", 12345])
def test_unknown_api_key_is_refused_with_403(app, events, apikey):
    """A missing or unknown API key answers 403, like OpenAlgo, and publishes nothing."""
    body = order() if apikey is None else {**order(), "apikey": apikey}
    response = app.test_client().post("/api/v1/placeorder", json=body)
    assert response.status_code == 403
    assert response.json == {"status": "error", "message": "Invalid openalgo apikey"}
    assert events.events == []


def test_every_event_is_followed_by_its_meta_for_the_page(app):
    """Each published event is also announced as demo_event_meta with its event_id, timestamp
    and the same data, so the page can show the event's own time; the event's Socket.IO payload
    itself is unchanged."""
    with DemoServer(app) as server, Listener(server.url, ["polling"]) as listener:
        requests.post(f"{server.url}/api/v1/placeorder",
                      json={"apikey": DEMO_API_KEY, **order()}, timeout=5)
        [(_, meta)] = listener.wait(1, "demo_event_meta")
        [(_, payload)] = listener.wait(1, "order_event")
    assert meta["event_type"] == "order_event" and meta["data"] == payload
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", meta["timestamp"])
    assert "timestamp" not in payload and "event_id" not in payload


def test_a_password_changes_meta_carries_what_its_payload_does_and_no_more(app):
    """The demo_event_meta of a password_change carries the event's browser payload: no IP
    address or user agent (Kafka only), exactly the data of the password_change itself."""
    with DemoServer(app) as server, Listener(server.url, ["polling"]) as listener:
        requests.post(f"{server.url}/api/v1/demo/changepassword", timeout=5,
                      json={"apikey": DEMO_API_KEY, "new_password": "s3cret-Pa55word"})
        [(_, meta)] = listener.wait(1, "demo_event_meta")
        [(_, payload)] = listener.wait(1, "password_change")
    assert meta["data"] == payload == {"user": USER, "status": "success",
                                       "message": "Password changed successfully"}


def test_the_page_loads_the_recovery_helper_next_to_its_socketio_client(app):
    """The page loads openalgo-events-recovery.js right after socket.io.min.js, and the app
    serves it (as the Flask extension does at /openalgo-events/recovery.js)."""
    client = app.test_client()
    page = client.get("/").data.decode()
    assert page.index('src="/vendor/socket.io.min.js"') < page.index(
        'src="/vendor/openalgo-events-recovery.js"') < page.index("app.js")
    for path in ("/vendor/openalgo-events-recovery.js", "/openalgo-events/recovery.js"):
        with client.get(path) as script:
            assert script.status_code == 200 and script.mimetype == "application/javascript"
            assert b"OpenAlgoEventsRecovery" in script.data


def test_page_loads_socketio_client_from_npm(app):
    """The page references the npm socket.io-client, which the app serves from node_modules."""
    client = app.test_client()
    page = client.get("/")
    assert page.status_code == 200
    assert b"Order ticket" in page.data and b'src="/vendor/socket.io.min.js"' in page.data
    with client.get("/vendor/socket.io.min.js") as script:
        assert script.status_code == 200
        assert script.mimetype == "application/javascript"
        assert len(script.data) > 10_000


def test_missing_socketio_client_explains_the_fix(app, monkeypatch, tmp_path):
    """Without socket.io-client the script route answers 500 saying what to do."""
    monkeypatch.setenv(SOCKETIO_JS_VAR, str(tmp_path / "nowhere.js"))
    response = app.test_client().get("/vendor/socket.io.min.js")
    assert response.status_code == 500
    assert SOCKETIO_JS_VAR.encode() in response.data and b"nowhere.js" in response.data


@pytest.mark.parametrize("transport", ["polling", "websocket"])
def test_socketio_client_sees_the_order(app, transport):
    """Over real HTTP, a placed order reaches a real Socket.IO client as order_event."""
    with DemoServer(app) as server, Listener(server.url, [transport]) as listener:
        answer = requests.post(f"{server.url}/api/v1/placeorder",
                               json={"apikey": DEMO_API_KEY, **order()}, timeout=5).json()
        [(name, payload)] = listener.wait(1, "order_event")
    assert name == "order_event"
    assert payload["orderid"] == answer["orderid"]
    assert payload["symbol"] == "SBIN" and payload["mode"] == "live"


@pytest.mark.broker
@pytest.mark.parametrize("topic_exists", [True, False])
def test_both_mode_shows_the_kafka_record(kafka_bootstrap, topic, tmp_path, topic_exists):
    """In BOTH mode the page gets the order over Socket.IO and, from the Kafka tap, the
    record that reached the topic: keyed by user, with the envelope and CloudEvents headers;
    only records produced after the app started, whether the topic existed before it started or
    was created after."""
    if topic_exists:
        create_topic(kafka_bootstrap, topic)
        publisher = KafkaEventPublisher(kafka_bootstrap, topic, settings=Settings.from_env(
            {"KAFKA_SPOOL_PATH": str(tmp_path / "old.db")}))
        publisher.publish_order_event(USER, "OLD", "BUY", "OLD1", "live")
        assert publisher.flush(10) == 0  # close() never waits: the relay delivers
        publisher.close()
    settings = Settings.from_env({
        "ORDER_EVENT_MODE": "BOTH", "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_ORDER_EVENTS_TOPIC": topic, "KAFKA_SPOOL_PATH": str(tmp_path / "spool"),
    })
    app, _ = create_app(settings)
    state = demo_state(app)
    try:
        if not topic_exists:
            # Created after the app (and its Kafka tap) started: clusters do not auto-create.
            create_topic(kafka_bootstrap, topic)
        with DemoServer(app) as server, Listener(server.url, ["polling"]) as listener:
            answer = requests.post(f"{server.url}/api/v1/placeorder",
                                   json={"apikey": DEMO_API_KEY, **order()}, timeout=5).json()
            [(_, live)] = listener.wait(1, "order_event")
            [(_, record)] = listener.wait(1, "kafka_record", timeout=30)
    finally:
        assert state.publisher.flush(10) == 0  # close() never waits: the relay delivers
        state.close()
    assert live["orderid"] == answer["orderid"]
    envelope = record["envelope"]
    assert (record["topic"], record["key"]) == (topic, USER)
    assert (envelope["event_type"], envelope["user_id"]) == ("order_event", USER)
    assert envelope["data"] == live
    assert record["headers"]["ce_type"] == "order_event"
    assert record["headers"]["ce_id"] == envelope["event_id"]
    assert DEMO_API_KEY not in json.dumps(record)


def start_demo(*args: str, port: int = 0) -> tuple[subprocess.Popen[str], list[str]]:
    """``openalgo-events demo ARGS`` in a child process; returns it and its first lines, up to
    the one that says how to stop it."""
    child = subprocess.Popen(
        [sys.executable, "-m", "openalgo_events", "demo", "--port", str(port), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    assert child.stdout is not None
    for line in child.stdout:  # the child prints these at once; the test timeout bounds it
        lines.append(line)
        if "Ctrl-C stops it" in line:
            break
    return child, lines


def stop_demo(child: subprocess.Popen[str], sig: int) -> str:
    child.send_signal(sig)
    rest, _ = child.communicate(timeout=20)
    return rest


def test_demo_command_serves_the_page_and_stops_on_ctrl_c(cli_env):
    """`openalgo-events demo` prints its URL, serves the page and the API with no broker,
    and on Ctrl-C closes the publisher and exits 0."""
    child, lines = start_demo()
    try:
        url = re.search(r"http://127\.0\.0\.1:\d+", "".join(lines))
        assert url, lines
        assert "mode SOCKETIO" in "".join(lines)
        assert requests.get(url.group(), timeout=5).status_code == 200
        with requests.get(f"{url.group()}/vendor/socket.io.min.js", timeout=5) as script:
            assert script.status_code == 200  # found from the package's directory
        answer = requests.post(f"{url.group()}/api/v1/placeorder",
                               json={"apikey": DEMO_API_KEY, **order()}, timeout=5)
        assert answer.json()["status"] == "success"
    finally:
        rest = stop_demo(child, signal.SIGINT)
    assert child.returncode == 0, rest
    assert "stopping" in rest and "0 events undelivered" in rest


@pytest.mark.broker
def test_demo_with_broker_sends_to_kafka_and_stops_the_broker(cli_env):
    """`demo --with-broker` runs Tansu, routes events to Socket.IO and Kafka (BOTH), and on
    SIGTERM delivers what is pending and stops the broker."""
    child, lines = start_demo("--with-broker")
    try:
        text = "".join(lines)
        url = re.search(r"http://127\.0\.0\.1:\d+", text)
        broker = re.search(r"Tansu broker on 127\.0\.0\.1:(\d+)", text)
        assert url and broker and "mode BOTH" in text, lines
        requests.post(f"{url.group()}/api/v1/placeorder",
                      json={"apikey": DEMO_API_KEY, **order()}, timeout=5)
        health = wait_for(lambda: (h := requests.get(f"{url.group()}/openalgo-events/health",
                                                     timeout=5).json())
                          ["transports"]["kafka"]["spool_depth"] == 0 and h, 20,
                          message="the order delivered to Kafka")
        assert health["mode"] == "BOTH" and health["healthy"]
        bootstrap = f"127.0.0.1:{broker.group(1)}"
        topic = "from_openalgo_order_events"
        assert f"topic {topic}: created (5 partitions" in text
        layout = describe(bootstrap, topic)
        assert layout["partitions"] == 5
        assert layout["retention.ms"] == "604800000"
        assert layout["max.message.bytes"] == "1048576"
        assert layout["compression.type"] == "snappy"
    finally:
        rest = stop_demo(child, signal.SIGTERM)
    assert child.returncode == 0, rest
    assert "0 events undelivered" in rest
    assert not port_open("127.0.0.1", int(broker.group(1)))


def describe(bootstrap: str, topic: str) -> dict[str, Any]:
    """A topic's partition count and its non-default configs."""
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient({"bootstrap.servers": bootstrap})
    partitions = len(admin.list_topics(topic, timeout=10).topics[topic].partitions)
    [future] = admin.describe_configs(
        [ConfigResource(ConfigResource.Type.TOPIC, topic)]).values()
    configs = {k: v.value for k, v in future.result(10).items()}
    return {"partitions": partitions, **configs}


def test_demo_mounts_the_extension_and_the_cli_switches_its_mode(cli_env, free_demo_port):
    """`openalgo-events demo` serves the extension's health and metrics under
    /openalgo-events (none at the root), and `openalgo-events mode` with the token it prints
    switches it (here: refused with the reason, as no broker is configured; the rollout
    changes)."""
    child, lines = start_demo(port=free_demo_port)
    try:
        text = "".join(lines)
        url = f"http://127.0.0.1:{free_demo_port}"
        assert f"openalgo-events reference app: {url}" in text
        assert "KAFKA and BOTH need a broker" in text
        health = requests.get(f"{url}/openalgo-events/health", timeout=5)
        assert health.status_code == 200 and health.json()["mode"] == "SOCKETIO"
        metrics = requests.get(f"{url}/openalgo-events/metrics", timeout=5)
        assert metrics.status_code == 200 and "openalgo_events_rollout_percent" in metrics.text
        assert requests.get(f"{url}/health", timeout=5).status_code == 404
        env = {**os.environ, "ORDER_EVENT_ADMIN_TOKEN": "demo-admin-token"}
        refused = subprocess.run(
            [sys.executable, "-m", "openalgo_events", "mode", "KAFKA", "--url", url],
            capture_output=True, text=True, timeout=30, env=env)
        assert refused.returncode == 1
        assert refused.stderr.startswith(f"Error: {url}/openalgo-events/mode answered 400: "
                                         "ORDER_EVENT_MODE=KAFKA needs Kafka settings")
        switched = subprocess.run(
            [sys.executable, "-m", "openalgo_events", "mode", "SOCKETIO", "--rollout", "40",
             "--url", url], capture_output=True, text=True, timeout=30, env=env)
        assert switched.returncode == 0, switched.stderr
        assert switched.stdout.strip() == "mode SOCKETIO, rollout 40% (was SOCKETIO, 100%)"
    finally:
        stop_demo(child, signal.SIGTERM)


@pytest.fixture
def free_demo_port() -> int:
    from openalgo_events.devbroker import free_port

    return free_port()


def test_demo_command_explains_a_port_in_use(cli_env):
    """A port already taken ends the command, before anything starts, with one 'Error:' line
    naming the port and both ways to choose another, and exit status 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = subprocess.run(
            [sys.executable, "-m", "openalgo_events", "demo", "--port", port],
            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"Error: port {port} on 127.0.0.1 is in use by another program; stop it, or choose "
        "another port with --port or OPENALGO_EVENTS_DEMO_PORT")


@pytest.mark.slow
def test_scripts_demo_on_a_fresh_checkout_then_again_without_reinstalling(tmp_path, cli_env):
    """scripts/demo on a fresh copy of the repository (no venv, no node_modules) installs what
    the demo needs, not the dev extra, and serves the page with its socket.io client; run again,
    it skips pip and npm (its stamps match) and starts at once."""
    root = Path(__file__).resolve().parents[2]
    checkout = tmp_path / "checkout"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        target = checkout / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)

    def start() -> tuple[subprocess.Popen[str], str]:
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        child = subprocess.Popen(["bash", "scripts/demo", "--port", "0"], cwd=checkout,
                                 env={**env, "PYTHONUNBUFFERED": "1"}, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        lines = []
        assert child.stdout is not None
        for line in child.stdout:  # bounded by the test timeout
            lines.append(line)
            if "Ctrl-C stops it" in line:
                break
        return child, "".join(lines)

    first, text = start()
    try:
        assert "installing openalgo-events[socketio,kafka]" in text
        assert "installing socket.io-client (npm ci)" in text
        url = re.search(r"http://127\.0\.0\.1:\d+", text)
        assert url, text
        with requests.get(f"{url.group()}/vendor/socket.io.min.js", timeout=5) as script:
            assert script.status_code == 200
    finally:
        stop_demo(first, signal.SIGTERM)
    assert first.returncode == 0
    venv = checkout / ".venv"
    installed = subprocess.run([venv / "bin" / "python", "-m", "pip", "list"],
                               capture_output=True, text=True, check=True).stdout
    assert "Flask-SocketIO" in installed and "confluent-kafka" in installed
    assert "mypy" not in installed and "playwright" not in installed

    started = time.monotonic()
    again, text = start()
    took = time.monotonic() - started
    stop_demo(again, signal.SIGTERM)
    assert "installing" not in text, text
    assert took < 10, took
