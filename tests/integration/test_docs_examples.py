"""The docs run: every code block of README.md and docs/*.md is run against the test broker
(Python, shell, a server with a deadline), parsed (JSON, .env files), checked (the layout), or
covered by a named test; the few illustrative ones say why. The consumer example in
docs/consumers.md runs as printed against a real broker."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from openalgo_events import (
    EventPublisher,
    KafkaEventPublisher,
    MemoryTransport,
    Settings,
    schema,
)
from openalgo_events.devbroker import free_port
from openalgo_events.spool import format as fmt
from tests.integration.openalgo_procs import APP, app_env
from tests.integration.relay_support import relay_pid, wait_relay_gone
from tests.support import create_topic, read_topic, wait_for

pytestmark = pytest.mark.broker
DOC = Path(__file__).resolve().parents[2] / "docs" / "consumers.md"


def _example_code() -> str:
    section = DOC.read_text().split("## Python (confluent-kafka)", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "docs/consumers.md lost its Python example"
    return match.group(1)


def test_the_documented_consumer_handles_each_event_once(kafka_bootstrap, topic, tmp_path):
    """The example joins its group, handles every event type it is sent, skips a redelivered
    copy (same event_id) and stops cleanly on Ctrl-C."""
    create_topic(kafka_bootstrap, topic)
    script = tmp_path / "consumer.py"
    script.write_text(_example_code())
    publisher = KafkaEventPublisher(kafka_bootstrap, topic, settings=Settings.from_env(
        {"KAFKA_SPOOL_PATH": str(tmp_path / "spool")}))
    placed = publisher.publish_order_event("alice", "SBIN-EQ", "BUY", "ORD1", "live", quantity=5)
    publisher.publish("order_update", "alice", orderid="ORD1", order_status="complete")
    publisher.publish_password_change("bob", "success", "Password changed")
    assert publisher.flush(10) == 0  # close() never waits: the relay delivers
    publisher.close()
    sentinel = EventPublisher(MemoryTransport()).publish("force_logout", "carol",
                                                          message="Session expired")
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for envelope in (placed, sentinel):  # a redelivered copy, then one more event
        producer.produce(topic, envelope.value, envelope.key, headers=envelope.headers())
    assert producer.flush(10) == 0

    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "KAFKA_ORDER_EVENTS_TOPIC": topic, "CONSUMER_GROUP": f"docs-{uuid.uuid4().hex}"}
    consumer = subprocess.Popen([sys.executable, str(script)], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: list[str] = []
    assert consumer.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(consumer.stdout or []), daemon=True)
    reader.start()
    try:
        wait_for(lambda: len(lines) >= 4, 40, message="the example's output")
    finally:
        consumer.send_signal(signal.SIGINT)
        _, err = consumer.communicate(timeout=30)
    reader.join(5)
    assert consumer.returncode == 0, err
    assert lines == ["alice: order ORD1 placed, BUY 5 SBIN-EQ (live)\n",
                     "alice: order ORD1 is complete\n",
                     "bob: success Password changed\n",
                     "carol: sessions changed (logout)\n"]


# -- every code block of README.md and docs/*.md ---------------------------------------------
ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(?:^<!-- docs-test: (?P<marker>.*?) -->\n)?"
                   r"^```(?P<lang>\w*)\n(?P<body>.*?)^```", re.S | re.M)
# The hosts the docs use stand for "your cluster": the examples run against the test broker.
PLACEHOLDER_HOSTS = ("kafka1:9092", "localhost:9092")
# The host app every Python fragment assumes (a Flask app and its Socket.IO server).
HOST_APP = ("from flask import Flask\nfrom flask_socketio import SocketIO\n"
            "app = Flask('docs_example')\nsocketio = SocketIO(app, async_mode='threading')\n")
MAX_ILLUSTRATIVE = 10
# Stand-ins for the OpenAlgo modules docs/openalgo.md imports (its API-key lookup, its bus).
OPENALGO_STAND_INS = {
    "database/__init__.py": "",
    "database/auth_db.py": ("def get_username_by_apikey(api_key):\n"
                            "    return {'key-of-alice': 'alice'}.get(api_key)\n"),
    "utils/__init__.py": "",
    "utils/event_bus.py": ("class EventBus:\n"
                           "    def __init__(self):\n        self.subscribers = {}\n"
                           "    def subscribe(self, topic, callback, name=''):\n"
                           "        self.subscribers.setdefault(topic, []).append(callback)\n"
                           "    def unsubscribe(self, topic, callback):\n"
                           "        self.subscribers.get(topic, []).remove(callback)\n"
                           "bus = EventBus()\n"),
}


class Block:
    """One fenced code block: where it is, its language, body and docs-test marker."""

    def __init__(self, path: Path, line: int, lang: str, body: str, marker: str | None):
        self.path, self.line, self.lang, self.body, self.marker = path, line, lang, body, marker

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str:
        if self.marker:
            return self.marker.split(":")[0].split(" by ")[0].strip()
        return {"python": "python", "json": "json", "sh": "shell", "bash": "shell"}.get(
            self.lang, "unknown")


def all_blocks() -> list[Block]:
    blocks = []
    for path in DOCS:
        text = path.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start("lang")) + 1
            blocks.append(Block(path, line, match.group("lang"), match.group("body"),
                                match.group("marker")))
    return blocks


def blocks_of(*kinds: str) -> list[Any]:
    return [pytest.param(b, id=b.name) for b in all_blocks() if b.kind in kinds]


def test_every_code_block_is_run_or_says_why_not():
    """Every block in README.md and docs/ is of a kind a test runs (python, shell, json, env
    file, layout, a server with a deadline, covered by a named test that exists), or marked
    illustrative with a reason; the illustrative list stays short."""
    blocks = all_blocks()
    assert len(blocks) > 30
    unknown = [b.name for b in blocks if b.kind not in {
        "python", "shell", "json", "env file", "layout", "server", "covered", "illustrative"}]
    assert unknown == [], unknown
    illustrative = [b for b in blocks if b.kind == "illustrative"]
    assert all(len(b.marker.split(":", 1)[1].strip()) > 10 for b in illustrative)
    assert len(illustrative) <= MAX_ILLUSTRATIVE, [b.name for b in illustrative]
    for block in (b for b in blocks if b.kind == "covered"):
        target = block.marker.split(" by ", 1)[1].split(" ", 1)[0]
        file, test = target.split("::")
        assert f"def {test}(" in (ROOT / file).read_text(), block.name


@pytest.fixture(scope="module")
def docs_env(kafka_bootstrap, tmp_path_factory) -> dict[str, str]:
    """The environment the examples run in: the test broker, the default topics created with
    `openalgo-events topics create`, a spool with one delivered event, a fresh directory
    holding stand-ins for the OpenAlgo modules the OpenAlgo guide imports."""
    workdir = tmp_path_factory.mktemp("docs")
    for name, text in OPENALGO_STAND_INS.items():
        (workdir / name).parent.mkdir(exist_ok=True)
        (workdir / name).write_text(text)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KAFKA_", "ORDER_EVENT_", "OPENALGO_EVENTS_"))}
    env.update(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, DOCS_WORKDIR=str(workdir),
               KAFKA_SPOOL_PATH=str(workdir / "openalgo_events_spool"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    created = subprocess.run([sys.executable, "-m", "openalgo_events", "topics", "create"],
                             env=env, cwd=workdir, capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    publisher = KafkaEventPublisher(kafka_bootstrap, settings=Settings.from_env(
        {"KAFKA_SPOOL_PATH": env["KAFKA_SPOOL_PATH"]}))
    publisher.publish_order_event("alice", "SBIN-EQ", "BUY", "ORD1", "live")
    assert publisher.flush(10) == 0  # close() never waits: flush() waits for the relay
    publisher.close()
    return env


def _with_test_broker(body: str, bootstrap: str) -> str:
    for host in PLACEHOLDER_HOSTS:
        body = body.replace(host, bootstrap)
    return body


@pytest.mark.parametrize("block", blocks_of("python"))
def test_python_block_runs(block, docs_env):
    """The Python example runs to completion against the test broker, inside a Flask app
    with its Socket.IO server, and prints no traceback."""
    script = Path(docs_env["DOCS_WORKDIR"]) / f"example_{block.path.stem}_{block.line}.py"
    script.write_text(HOST_APP + _with_test_broker(block.body,
                                                   docs_env["KAFKA_BOOTSTRAP_SERVERS"]))
    done = subprocess.run([sys.executable, str(script)], env=docs_env, cwd=script.parent,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{block.name}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("block", blocks_of("shell"))
def test_shell_block_runs(block, docs_env):
    """The shell example exits 0 against the test broker and prints no 'Error:' line."""
    done = subprocess.run(["bash", "-euo", "pipefail", "-c",
                           _with_test_broker(block.body, docs_env["KAFKA_BOOTSTRAP_SERVERS"])],
                          env=docs_env, cwd=docs_env["DOCS_WORKDIR"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"{block.name}\n{done.stdout}\n{done.stderr}"
    assert "Error:" not in done.stderr


@pytest.mark.parametrize("block", blocks_of("server"))
def test_server_block_starts_and_stops_cleanly(block, docs_env):
    """The long-running command starts (prints its ready line within the deadline) and stops
    cleanly on SIGTERM with exit status 0."""
    ready = block.marker.split(":", 1)[1].strip()
    # bash runs a single simple command in its own process (no fork), so SIGTERM reaches it.
    server = subprocess.Popen(["bash", "-c", _with_test_broker(
        block.body.strip(), docs_env["KAFKA_BOOTSTRAP_SERVERS"])], env=docs_env,
        cwd=docs_env["DOCS_WORKDIR"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(server.stdout or []), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(ready in line for line in lines), 60,
                 message=f"{ready!r} from {block.name}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    reader.join(5)
    if server.stdout is not None:
        server.stdout.close()
    assert server.returncode == 0, "".join(lines)


@pytest.mark.parametrize("block", blocks_of("json"))
def test_json_block_parses(block):
    """The JSON example is valid JSON (one or more documents); an envelope validates against
    the shipped envelope schema."""
    text, decoder, position, docs = block.body, json.JSONDecoder(), 0, []
    while text[position:].strip():
        position += len(text[position:]) - len(text[position:].lstrip())
        doc, position = decoder.raw_decode(text, position)
        docs.append(doc)
    assert docs
    from jsonschema import Draft202012Validator

    envelope_schema = schema.load("envelope.schema.json")
    for doc in docs:
        if isinstance(doc, dict) and {"event_id", "event_type", "schema_version"} <= set(doc):
            Draft202012Validator(envelope_schema).validate(doc)


@pytest.mark.parametrize("block", blocks_of("env file"))
def test_env_file_block_is_a_valid_configuration(block, tmp_path):
    """The .env example, written to a file, is a valid configuration with no warning."""
    from dotenv import dotenv_values

    env_file = tmp_path / ".env"
    env_file.write_text(block.body)
    values = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    assert values
    settings = Settings.from_env(values)
    assert settings.warnings == ()
    assert settings.bootstrap_servers or settings.security_protocol == "SSL"


@pytest.mark.parametrize("block", blocks_of("layout"))
def test_layout_block_names_files_that_exist(block):
    """Every file and directory the layout block names exists where it says."""
    folder = ROOT
    for line in block.body.splitlines():
        words = line.split()
        if not words:
            continue
        if not line.startswith(" "):  # a top-level path, then its description
            folder = ROOT / words[0]
            assert folder.exists(), line
            continue
        for word in words:
            if re.fullmatch(r"\w+\.py|\w+/", word):
                assert (folder / word).exists() or any(folder.glob(f"*/{word}")), (word, line)


def test_the_readme_first_snippet_in_kafka_mode_delivers_everything(docs_env, topic, tmp_path):
    """README's first example, run as a script in KAFKA mode that exits right after close(),
    has its three events (the registered risk_alert included) delivered by the detached relay
    it started, which then leaves nothing pending in the spool and exits by itself."""
    [first] = [b for b in all_blocks() if b.path.name == "README.md" and b.lang == "python"][:1]
    assert "register(EventSpec(" in first.body and "publisher.close()" in first.body
    create_topic(docs_env["KAFKA_BOOTSTRAP_SERVERS"], topic)
    script = tmp_path / "first.py"
    script.write_text(first.body)
    spool = tmp_path / "spool"
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120,
                          env={**docs_env, "ORDER_EVENT_MODE": "KAFKA",
                               "KAFKA_ORDER_EVENTS_TOPIC": topic, "KAFKA_SPOOL_PATH": str(spool)})
    assert done.returncode == 0, done.stderr
    envelopes = [json.loads(m.value()) for m in read_topic(docs_env["KAFKA_BOOTSTRAP_SERVERS"],
                                                           topic, 3)]
    assert [(e["event_type"], e["user_id"]) for e in envelopes] == [
        ("order_event", "alice"), ("order_notification", "alice"), ("risk_alert", "alice")]
    assert envelopes[2]["data"] == {"level": "high"}

    def spool_status() -> dict[str, Any]:
        status = subprocess.run([sys.executable, "-m", "openalgo_events", "spool", "status",
                                 "--json", "--spool", str(spool)], env=docs_env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        return dict(json.loads(status.stdout))

    wait_for(lambda: spool_status()["depth"] == 0, 30,
             message=lambda: f"an empty spool: {spool_status()}")
    wait_relay_gone(str(spool), 30)


def _relay_log(spool: Path) -> str:
    log = spool / fmt.RELAY_LOG
    return log.read_text() if log.exists() else "(none)"


def test_the_spool_files_the_operations_guide_lists_are_there(docs_env, topic, tmp_path):
    """Every file docs/operations.md lists in the spool directory exists once a script has
    published (its journal; the relay's lock, ledger, status, doorbell and log; the keeper's
    lock; identity and the rejected store), and the relay delivers the event; once the script's
    journal is done with, it moves to the trail."""
    [layout] = [b for b in all_blocks() if b.path.name == "operations.md"
                and "relay.lock" in b.body and "ledger" in b.body]
    create_topic(docs_env["KAFKA_BOOTSTRAP_SERVERS"], topic)
    spool = tmp_path / "spool"
    publisher = KafkaEventPublisher(docs_env["KAFKA_BOOTSTRAP_SERVERS"], topic,
                                    settings=Settings.from_env({"KAFKA_SPOOL_PATH": str(spool)}))
    names = [line.split()[0] for line in layout.body.splitlines() if line.strip()]
    assert len(names) == 10, names
    try:
        publisher.publish_order_event("alice", "SBIN-EQ", "BUY", "ORD1", "live")
        assert publisher.flush(30) == 0, _relay_log(spool)
        wait_for(lambda: (spool / fmt.STATUS).exists(), 30, message="the relay's status")
        for name in names:
            if name.startswith(fmt.WRITERS):
                assert any(p.name.startswith(f"{os.getpid()}-")
                           for p in (spool / fmt.WRITERS).iterdir()), name
            elif not name.startswith(fmt.TRAIL):
                assert (spool / name).exists(), name
    finally:
        publisher.close()
    wait_for(lambda: (spool / fmt.TRAIL).is_dir() and any((spool / fmt.TRAIL).iterdir()), 30,
             message=lambda: f"the journal moved to the trail; log: {_relay_log(spool)}")
    [message] = read_topic(docs_env["KAFKA_BOOTSTRAP_SERVERS"], topic, 1)
    assert json.loads(message.value())["data"]["orderid"] == "ORD1"


def test_the_systemd_unit_runs_the_relay_and_stops_it_in_time(docs_env, topic, tmp_path):
    """The unit's ExecStart, run from its WorkingDirectory with the app's environment, holds
    the spool, answers /health on the port it names, and on the unit's KillSignal exits 0
    within TimeoutStopSec."""
    import urllib.request

    [block] = [b for b in all_blocks() if b.path.name == "operations.md"
               and b.body.startswith("[Unit]")]
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(block.body)
    service = unit["Service"]
    port = free_port()
    argv = service["ExecStart"].replace("9464", str(port)).split()
    assert argv[0] == "/opt/openalgo/.venv/bin/openalgo-events"
    argv[0] = str(Path(sys.executable).parent / "openalgo-events")
    create_topic(docs_env["KAFKA_BOOTSTRAP_SERVERS"], topic)
    spool = str(tmp_path / "openalgo_events_spool")
    env = {**docs_env, "KAFKA_ORDER_EVENTS_TOPIC": topic, "KAFKA_SPOOL_PATH": spool}
    relay = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: relay_pid(spool) == relay.pid, 30, message="the relay holds the spool")

        def health() -> Any:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    return json.loads(r.read())
            except OSError:
                return None

        assert isinstance(wait_for(health, 30, message=f"/health on port {port}"), dict)
    finally:
        relay.send_signal(getattr(signal, service["KillSignal"]))
        output, _ = relay.communicate(timeout=float(service["TimeoutStopSec"]))
    assert relay.returncode == 0, output
    assert relay_pid(spool) is None


def test_the_user_resolver_line_names_openalgos_function(tmp_path, monkeypatch):
    """The `.env` line of docs/openalgo.md, read as OpenAlgo reads `.env` (python-dotenv),
    names OpenAlgo's `database.auth_db.get_username_by_apikey` in a form the hook resolves."""
    from dotenv import dotenv_values

    from openalgo_events.integrations.installation import ENV_USER_RESOLVER, resolve

    [block] = [b for b in all_blocks() if b.path.name == "openalgo.md"
               and ENV_USER_RESOLVER in b.body and b.lang == "ini"]
    (tmp_path / ".env").write_text(block.body)
    values = dotenv_values(tmp_path / ".env")
    for name, text in OPENALGO_STAND_INS.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in ("database", "database.auth_db"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    resolver = resolve(str(values[ENV_USER_RESOLVER]))
    assert resolver.__module__ == "database.auth_db"
    assert resolver.__name__ == "get_username_by_apikey"
    assert resolver("key-of-alice") == "alice"


# -- docs/openalgo.md: the install steps, as an operator runs them ---------------------------
OPENALGO_GUIDE = ROOT / "docs" / "openalgo.md"
# OpenAlgo's own gunicorn commands, which the guide has operators keep: start.sh's in its Docker
# image, and the one in the systemd unit install/install.sh writes (marketcalls/openalgo).
OPENALGO_START_SH = ("gunicorn --worker-class eventlet --workers 1 --bind 0.0.0.0:5000 "
                     "--timeout 300 --graceful-timeout 30 --worker-tmp-dir /tmp/gunicorn_workers "
                     "--no-control-socket --log-level warning app:app")
OPENALGO_INSTALL_SH = ("gunicorn --worker-class eventlet -w 1 "
                       "--bind unix:/var/python/openalgo/openalgo.sock --timeout 300 "
                       "--log-level info app:app")


def _guide_block(text: str, lang: str | None = None) -> Block:
    """The one block of docs/openalgo.md whose body holds ``text`` (and is in ``lang``)."""
    [block] = [b for b in all_blocks() if b.path == OPENALGO_GUIDE and text in b.body
               and (lang is None or b.lang == lang)]
    return block


def _replaced(body: str, *pairs: tuple[str, str]) -> str:
    for old, new in pairs:
        assert old in body, f"the guide's block lost {old!r}: update this test"
        body = body.replace(old, new)
    return body


def _guide_env_file(bootstrap: str, topic: str, token: str = "") -> str:
    """The guide's `.env` block for the test broker, a topic of the test's own and ``token``."""
    return _replaced(_guide_block("ORDER_EVENT_MODE = 'BOTH'", "ini").body,
                     ("kafka1:9092,kafka2:9092", bootstrap),
                     ("'from_openalgo_order_events'", f"'{topic}'"),
                     ("ORDER_EVENT_ADMIN_TOKEN = ''", f"ORDER_EVENT_ADMIN_TOKEN = '{token}'"))


def _operator_env() -> dict[str, str]:
    """An operator's shell: none of the package's variables, no virtualenv active."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("KAFKA_", "ORDER_EVENT_", "OPENALGO_EVENTS_", "GUNICORN_"))
            and k not in ("VIRTUAL_ENV", "PYTHONPATH")}


def test_the_openalgo_guide_install_runs_as_printed(kafka_bootstrap, topic, tmp_path):
    """The guide's build command makes the wheel its install lines name; in an OpenAlgo
    directory whose venv was made with `python -m venv`, with the guide's `.env` block, its pip
    line installs that wheel with its extras (from the package index: it needs the network), and
    `topics create` then `check` create the topic, print the verdict and spool line the guide
    quotes, and exit 0."""
    guide = OPENALGO_GUIDE.read_text()
    dist = tmp_path / "dist"
    build = _replaced(_guide_block("pip wheel", "bash").body,
                      ("cd /path/to/openalgo-events\n", f"cd {ROOT}\n"),
                      (" -w dist ", f" -w {dist} "))
    built = subprocess.run(["bash", "-euo", "pipefail", "-c", build], env=_operator_env(),
                           cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = dist.glob("openalgo_events-*.whl")
    assert f"`dist/{wheel.name}`" in guide

    openalgo = tmp_path / "openalgo"
    (openalgo / "db").mkdir(parents=True)
    venv = subprocess.run([sys.executable, "-m", "venv", str(openalgo / ".venv")],
                          capture_output=True, text=True, timeout=120)
    assert venv.returncode == 0, venv.stderr
    (openalgo / ".env").write_text(_guide_env_file(kafka_bootstrap, topic))
    install = _replaced(_guide_block(".venv/bin/pip install", "bash").body,
                        ("cd /path/to/openalgo\n", f"cd {openalgo}\n"),
                        (f"/tmp/{wheel.name}", str(wheel)))
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", install], env=_operator_env(),
                          cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{topic}: created" in done.stdout, done.stdout
    spool_line = "Mode BOTH; spool {}/db/openalgo_events_spool (--verbose lists every setting)"
    for quoted, printed in (("OK: publishing to Kafka would work.",) * 2,
                            (spool_line.format("/path/to/openalgo"), spool_line.format(openalgo))):
        assert f"`{quoted}`" in guide
        assert printed in done.stdout, done.stdout


@pytest.mark.parametrize("install", ["INSTALL.md", "install.sh", "docker"])
def test_the_openalgo_guide_hook_runs_under_openalgos_gunicorn_commands(
        install, kafka_bootstrap, topic, tmp_path):
    """Started as the guide says for each way OpenAlgo is installed (INSTALL.md's command with
    the option added; install.sh's unit flags with the drop-in's GUNICORN_CMD_ARGS; start.sh's
    flags with the compose override's), from a directory holding the guide's `.env`, gunicorn
    runs the hook: the guide's health command for that address answers in mode BOTH (no bridge
    key) with the spool resolved in that directory, an event reaches Kafka, the log has the
    worker's and the relay's lines the guide quotes, and on Docker's address the operations
    block (health, metrics, the token exported, a switch by curl and by the CLI) runs as
    printed."""
    create_topic(kafka_bootstrap, topic)
    token = uuid.uuid4().hex
    (tmp_path / ".env").write_text(_guide_env_file(kafka_bootstrap, topic, token))
    (tmp_path / "db").mkdir()
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    port = free_port()
    env = app_env(tmp_path, LOOKALIKE_OPENALGO_LOGGING="1")  # the look-alike stands for OpenAlgo
    env.pop("KAFKA_SPOOL_PATH")  # the guide's `.env` names it
    if install == "INSTALL.md":
        [line] = [x for x in _guide_block("--worker-class eventlet", "bash").body.splitlines()
                  if x.startswith(".venv/bin/gunicorn ")]
        argv = [*shlex.split(_replaced(line, (".venv/bin/gunicorn", gunicorn))),
                "--bind", f"127.0.0.1:{port}"]
        address, actual = "127.0.0.1:8000", f"127.0.0.1:{port}"
        base = ["curl", "-s", f"http://{actual}"]
    elif install == "install.sh":
        dropin = configparser.ConfigParser(interpolation=None)
        dropin.optionxform = str  # type: ignore[assignment,method-assign]
        dropin.read_string(_guide_block("GUNICORN_CMD_ARGS", "ini").body)
        name, value = dropin["Service"]["Environment"].strip('"').split("=", 1)
        env[name] = value
        socket = tmp_path / "openalgo.sock"
        argv = [gunicorn, *shlex.split(_replaced(
            OPENALGO_INSTALL_SH, ("/var/python/openalgo/openalgo.sock", str(socket))))[1:]]
        address, actual = "/var/python/openalgo/openalgo.sock", str(socket)
        base = ["curl", "-s", "--unix-socket", actual, "http://localhost"]
    else:
        compose = _guide_block("GUNICORN_CMD_ARGS", "yaml").body
        [value] = re.findall(r"^\s+- GUNICORN_CMD_ARGS=(.+)$", compose, re.M)
        env["GUNICORN_CMD_ARGS"] = value
        (tmp_path / "gunicorn_workers").mkdir()
        argv = [gunicorn, *shlex.split(_replaced(
            OPENALGO_START_SH, ("0.0.0.0:5000", f"127.0.0.1:{port}"),
            ("/tmp/gunicorn_workers", str(tmp_path / "gunicorn_workers"))))[1:]]
        address, actual = "127.0.0.1:5000", f"127.0.0.1:{port}"
        base = ["curl", "-s", f"http://{actual}"]
    argv = [f"{APP}:app" if arg == "app:app" else arg for arg in argv]
    [health_line] = [x for x in _guide_block("--unix-socket", "bash").body.splitlines()
                     if x.startswith("curl ") and address in x]
    health_command = health_line.replace(address, actual)

    def health() -> dict[str, Any] | None:
        done = subprocess.run(["bash", "-c", health_command], capture_output=True, text=True,
                              timeout=30)
        try:
            body = json.loads(done.stdout) if done.returncode == 0 else None
        except ValueError:
            return None
        return body if body and body.get("healthy") else None

    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        server = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        answer = wait_for(health, 60, step=0.5,
                          message=lambda: f"healthy from {health_command}: {log.read_text()}")
        spool = str(tmp_path / "db" / "openalgo_events_spool")
        assert answer["mode"] == "BOTH" and "bridge" not in answer, answer
        assert answer["transports"]["kafka"]["spool_path"] == spool
        published = subprocess.run([*base[:-1], "-X", "POST", f"{base[-1]}/publish?orderid=G"],
                                   capture_output=True, text=True, timeout=30)
        assert published.returncode == 0 and '"published"' in published.stdout, published
        [message] = read_topic(kafka_bootstrap, topic, 1)
        assert json.loads(message.value())["data"]["orderid"] == "G-0"
        if install == "docker":
            _run_the_operations_block(port, token)
            assert wait_for(health, 10)["mode"] == "SOCKETIO"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    text = log.read_text()
    assert server.returncode == 0, text
    guide = OPENALGO_GUIDE.read_text()
    worker_line = ("openalgo-events installed: mode BOTH, topic from_openalgo_order_events, "
                   "mirror on, bridge off")
    relay_line = "relay for spool <path> running (pid N, port P, K pending)"
    assert f"`{worker_line}`" in guide and f"`{relay_line}`" in guide
    assert worker_line.replace("from_openalgo_order_events", topic) in text, text

    def printed(line: str) -> bool:
        pattern = re.escape(line)  # N, P and K are its only capitals
        for placeholder in ("N", "P", "K"):
            pattern = pattern.replace(placeholder, r"\d+")
        return re.search(pattern.replace("<path>", re.escape(spool)), text) is not None

    assert printed(relay_line), text
    master_line = "openalgo-events: relay keeper started (pid N) for spool <path>"
    assert f"`{master_line}`" in guide
    assert printed(master_line) is (install != "docker"), text  # start.sh: --log-level warning
    assert "Traceback" not in text, text


def _run_the_operations_block(port: int, token: str) -> None:
    """The guide's operations block, run as printed on the address of a running worker whose
    `.env` holds ``token``: every command succeeds, the last two switch to SOCKETIO."""
    block = _guide_block("export ORDER_EVENT_ADMIN_TOKEN", "bash")
    script = _replaced(block.body, ("127.0.0.1:5000", f"127.0.0.1:{port}"),
                       ("<the value of ORDER_EVENT_ADMIN_TOKEN in .env>", token),
                       (".venv/bin/openalgo-events", str(Path(sys.executable).parent /
                                                         "openalgo-events")))
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=_operator_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "openalgo_events_published_total" in done.stdout, done.stdout
    assert '"mode":"SOCKETIO"' in done.stdout.replace(" ", ""), done.stdout
    assert "mode SOCKETIO, rollout 100% (was SOCKETIO, 100%)" in done.stdout, done.stdout
