"""The command line never misleads: a command that cannot do its job exits non-zero with one
'Error: ...' line saying why; check gives its verdict first; the configuration's own messages
name the real problem; dev-broker refuses a port it does not own."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from flask_socketio import SocketIO

from openalgo_events import EventPublisher, Settings
from openalgo_events.cli import DEMO_PORT, main
from openalgo_events.config import Mode
from openalgo_events.demo import DemoServer
from openalgo_events.demo.run import DEMO_PORT as RUN_DEMO_PORT
from openalgo_events.devbroker import DevBroker, free_port, listens_on, port_free
from openalgo_events.errors import ConfigError, OpenAlgoEventsError
from openalgo_events.publisher import build_publisher
from openalgo_events.testing import MemoryTransport
from openalgo_events.transports.routing import Route, RoutingTransport

SECRET = "s3cret-Pa55word"


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def _one_error_line(result) -> str:
    """The failure's stderr: exactly one line, 'Error: ...', the program name not repeated."""
    assert result.exit_code != 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: "), lines
    assert "openalgo-events:" not in lines[0] and "Traceback" not in result.stderr
    return lines[0]


def test_failures_of_every_kind_share_one_prefix(cli_env, tmp_path):
    """A configuration error, a missing token, an unreachable app and a missing spool all end
    in one 'Error:' line and a non-zero status."""
    cli_env(KAFKA_PRODUCER_LINGER_MS="soon")
    line = _one_error_line(run("check"))
    assert line.startswith("Error: invalid configuration: KAFKA_PRODUCER_LINGER_MS='soon'")
    cli_env(KAFKA_PRODUCER_LINGER_MS="10")
    _one_error_line(run("mode", "KAFKA"))
    line = _one_error_line(run("mode", "KAFKA", "--token", "x",
                               "--url", f"http://127.0.0.1:{free_port()}"))
    assert "cannot reach" in line and "is the app running" in line
    line = _one_error_line(run("spool", "status", "--spool", str(tmp_path / "none.db")))
    assert "no spool directory" in line


def test_several_configuration_problems_are_listed_under_one_error(cli_env):
    """Two problems: one 'Error: invalid configuration (2 problems):' line, then each."""
    cli_env(KAFKA_PRODUCER_LINGER_MS="soon", KAFKA_ROLLOUT_PERCENT="150")
    result = run("check")
    assert result.exit_code == 1
    first, *rest = result.stderr.strip().splitlines()
    assert first == "Error: invalid configuration (2 problems):"
    assert len(rest) == 2 and all(line.startswith("  - ") for line in rest)
    assert "openalgo-events configuration" not in result.stderr


def test_check_gives_the_verdict_first_and_the_settings_only_when_asked(cli_env):
    """check's first line is the verdict; the 30-odd settings appear only with --verbose, after
    it; a short line says where they are."""
    short = run("check")
    assert short.exit_code == 0
    lines = short.stdout.splitlines()
    assert lines[0].startswith("OK: mode SOCKETIO")
    assert "KAFKA_PRODUCER_LINGER_MS" not in short.stdout
    assert "--verbose lists every setting" in short.stdout
    verbose = run("check", "--verbose").stdout.splitlines()
    assert verbose[0] == lines[0]
    assert verbose.index("Configuration (secrets masked):") > 0
    assert any("KAFKA_PRODUCER_LINGER_MS" in line for line in verbose)


def test_an_out_of_range_port_is_called_that(cli_env):
    """127.0.0.1:99999 is 'out of range', not 'malformed', in Settings and in check."""
    with pytest.raises(ConfigError, match=r"port of '127\.0\.0\.1:99999' is out of range"):
        Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:99999"})
    cli_env(KAFKA_BOOTSTRAP_SERVERS="kafka1:9092,127.0.0.1:99999")
    line = _one_error_line(run("check"))
    assert "out of range" in line and "malformed" not in line


def test_a_sasl_password_without_sasl_is_warned_about_never_shown(cli_env, caplog):
    """KAFKA_SASL_PASSWORD with KAFKA_SECURITY_PROTOCOL=PLAINTEXT is a warning (from Settings,
    in check and in the publisher's start-up log) naming the fix and not the password."""
    settings = Settings.from_env({"KAFKA_SASL_PASSWORD": SECRET, "KAFKA_SASL_USERNAME": "svc"})
    [warning] = [w for w in settings.warnings if "SASL" in w]
    assert "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD are set but KAFKA_SECURITY_PROTOCOL=" \
           "PLAINTEXT does not use SASL" in warning and "SASL_SSL" in warning
    assert SECRET not in warning
    assert not [w for w in Settings.from_env({"KAFKA_SASL_PASSWORD": SECRET, "KAFKA_SASL_USERNAME":
                "svc", "KAFKA_SASL_MECHANISM": "PLAIN",
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}).warnings if "SASL" in w]
    cli_env(KAFKA_SASL_PASSWORD=SECRET)
    result = run("check")
    assert result.exit_code == 0
    assert "warning: KAFKA_SASL_PASSWORD is set but" in result.stderr
    assert SECRET not in result.output + result.stderr
    with caplog.at_level(logging.WARNING):
        build_publisher(settings, SocketIO(Flask(__name__), async_mode="threading")).close(1)
    assert any("does not use SASL" in r.getMessage() for r in caplog.records)


def test_socketio_without_a_socketio_server_names_the_mode_not_the_rollout():
    """SOCKETIO mode without Flask-SocketIO says the mode needs it and does not mention
    KAFKA_ROLLOUT_PERCENT; KAFKA at 50% does, since only the rollout needs Socket.IO there."""
    with pytest.raises(ConfigError) as plain:
        RoutingTransport(Route(Mode.SOCKETIO))
    assert "ORDER_EVENT_MODE=SOCKETIO emits to Socket.IO" in str(plain.value)
    assert "KAFKA_ROLLOUT_PERCENT" not in str(plain.value)
    with pytest.raises(ConfigError, match="KAFKA_ROLLOUT_PERCENT=50"):
        RoutingTransport(Route(Mode.KAFKA, 50), kafka=MemoryTransport())


def test_a_mode_switch_logs_plain_words(caplog):
    """The switch's log line reads 'from SOCKETIO, rollout 100% to KAFKA, rollout 10%': no
    dataclass or enum repr."""
    router = RoutingTransport(Route(Mode.SOCKETIO), socketio=MemoryTransport(),
                              kafka_factory=MemoryTransport)
    with caplog.at_level(logging.WARNING):
        EventPublisher(router).switch_mode("KAFKA", 10)
    [message] = [r.getMessage() for r in caplog.records if "switched" in r.getMessage()]
    assert message == ("order event route switched from SOCKETIO, rollout 100% to KAFKA, "
                       "rollout 10%")


def test_mode_against_an_app_without_the_extension_says_so_in_one_line():
    """A 404 from an app that does not mount OpenAlgoEvents is explained in one line (URL,
    --url/--prefix), never as the app's HTML page."""
    with DemoServer(Flask(__name__)) as server:
        line = _one_error_line(run("mode", "KAFKA", "--token", "x", "--url", server.url))
    assert line == (f"Error: {server.url}/openalgo-events/mode answered 404: no openalgo-events "
                    "extension there; check --url and --prefix (the app must mount "
                    "OpenAlgoEvents)")


def test_the_demo_port_is_not_openalgos_and_mode_defaults_to_it():
    """The demo listens on 8765 by default, not 5000 (OpenAlgo's), and `mode`'s default URL is
    that same port, so `openalgo-events mode KAFKA` reaches a running demo."""
    demo_port = next(p for p in main.commands["demo"].params if p.name == "port")
    url = next(p for p in main.commands["mode"].params if p.name == "url")
    assert demo_port.default == DEMO_PORT == RUN_DEMO_PORT != 5000
    assert url.default == f"http://127.0.0.1:{DEMO_PORT}"


def test_dev_broker_on_a_taken_port_fails_at_once():
    """`dev-broker --port P` with P already listening exits 1 with one line, within seconds,
    and prints no 'listening' claim."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "openalgo_events", "dev-broker",
                                 "--port", str(port)], capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"Error: port {port} on 127.0.0.1 is already in use; stop "
                                     "what listens there or choose another port with --port")
    assert "listening" not in result.stdout
    assert time.monotonic() - started < 30


def test_a_stranger_listening_is_not_the_broker():
    """listens_on tells this process's listening socket from another process's: answering on
    the port is not enough to count as the broker's."""
    with socket.socket() as mine:
        mine.bind(("127.0.0.1", 0))
        mine.listen()
        port = mine.getsockname()[1]
        assert not port_free(port)
        assert listens_on(os.getpid(), port) is True
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            assert listens_on(other.pid, port) is False
        finally:
            other.kill()
            other.wait(10)
    with pytest.raises(OpenAlgoEventsError, match="already in use"), socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        DevBroker(taken.getsockname()[1]).start()


def test_a_listener_in_a_child_process_counts_as_the_parents():
    """A broker that listens from a child process is still recognised as the one listening:
    listens_on looks at the process and its descendants."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys; subprocess.run([sys.executable, '-c', "
         f"\"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); "
         "s.listen(); print('up', flush=True); time.sleep(60)\"])"],
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline() == "up\n"
        assert listens_on(parent.pid, port) is True
    finally:
        os.killpg(parent.pid, signal.SIGKILL)  # the parent and its listening child
        parent.wait(10)
        parent.stdout.close()


def test_check_gives_the_verdict_first_in_every_outcome(cli_env, tmp_path):
    """As the terminal shows it (stdout and stderr in order), check's first line is its verdict
    whatever the outcome: the 'Error:' line of an unreachable broker or a bad spool directory
    comes before the 'Mode ...; spool ...' line, and a configuration warning after 'OK:'."""
    cli_env(ORDER_EVENT_MODE="KAFKA", KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}")
    unreachable = run("check", "--timeout", "0.5")
    assert unreachable.exit_code == 2, unreachable.output
    lines = unreachable.output.splitlines()
    assert lines[0].startswith("Error: cannot reach Kafka at 127.0.0.1:"), lines
    assert lines[1].startswith("Mode KAFKA; spool "), lines

    cli_env(KAFKA_SPOOL_PATH=str(tmp_path / "missing" / "spool.db"))
    bad_spool = run("check")
    assert bad_spool.exit_code == 1, bad_spool.output
    lines = bad_spool.output.splitlines()
    assert lines[0].startswith("Error: invalid configuration: KAFKA_SPOOL_PATH="), lines
    assert lines[1] == (f"Mode KAFKA; spool {tmp_path / 'missing' / 'spool.db'} "
                        "(--verbose lists every setting)")

    cli_env(ORDER_EVENT_MODE="SOCKETIO", ORDER_EVENT_MODEE="KAFKA")
    warned = run("check")
    assert warned.exit_code == 0, warned.output
    lines = warned.output.splitlines()
    assert lines[0].startswith("OK: mode SOCKETIO"), lines
    assert lines[1].startswith("warning: ORDER_EVENT_MODEE is not an openalgo-events "
                               "variable"), lines


CHECK_EXITS = ("0 ok", "1 configuration invalid", "2 broker unreachable", "3 a topic missing")


def test_every_exit_status_of_check_is_listed_wherever_they_are_listed():
    """check's exit statuses (0 ok, 1 configuration invalid, 2 broker unreachable, 3 a topic
    missing) are all listed in its --help, in the README, docs/operations.md and
    docs/security.md, and every other line of the docs that lists some of them."""
    root = Path(__file__).resolve().parents[2]
    places = {"check --help": " ".join(run("check", "--help").output.split())}
    for path in (root / "README.md", *sorted((root / "docs").glob("*.md"))):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "1 configuration invalid" in line or (
                    "openalgo-events check" in line and "exit" in line.lower()):
                places[f"{path.name}:{number}"] = line
    assert {"README.md", "operations.md", "security.md"} <= {
        name.split(":")[0] for name in places}, places
    for name, text in places.items():
        missing = [status for status in CHECK_EXITS if status not in text]
        assert not missing, f"{name} does not list {missing}: {text}"


def test_plural_says_one_of_a_thing():
    """The CLI's counts read as English: 1 event, 0 events, 2 partitions."""
    from openalgo_events._words import plural

    assert [plural(n, "event") for n in (0, 1, 2)] == ["0 events", "1 event", "2 events"]
    assert plural(1, "partition") == "1 partition"
