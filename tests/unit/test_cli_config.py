"""The command line without a broker: help, configuration check, friendly failures, spool."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from openalgo_events import Envelope, EventPublisher, KafkaEventPublisher, Settings, __version__
from openalgo_events.cli import main
from openalgo_events.config import sample_env
from openalgo_events.devbroker import free_port
from openalgo_events.ops.when import parse_when
from openalgo_events.relay.reader import Reader
from openalgo_events.relay.trail import retire
from openalgo_events.spool import Spool
from openalgo_events.spool import format as fmt
from openalgo_events.spool.directory import SpoolDirectory

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cret-Pa55word"


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def _unused_bootstrap() -> str:
    return f"127.0.0.1:{free_port()}"


def test_help_shows_every_command_with_examples():
    """The top-level help lists the operators' commands, and each command's help has examples."""
    result = run("--help")
    assert result.exit_code == 0
    for command in ("check", "topics", "tail", "replay", "spool", "schemas", "dev-broker"):
        assert command in result.output
    for args in (["check"], ["topics", "create"], ["topics", "describe"], ["tail"], ["replay"],
                 ["spool", "status"], ["schemas", "generate"]):
        sub = run(*args, "--help")
        assert sub.exit_code == 0, sub.output
        assert "Example" in sub.output, args


def test_version_option_prints_the_package_version():
    """--version prints the installed version."""
    result = run("--version")
    assert result.exit_code == 0
    assert __version__ in result.output


def test_check_in_socketio_mode_passes_and_masks_secrets(cli_env):
    """With no Kafka mode, check exits 0 with its verdict on the first line, shows the
    configuration after it with --verbose, and never a secret."""
    cli_env(KAFKA_SASL_PASSWORD=SECRET, ORDER_EVENT_ADMIN_TOKEN=SECRET + "-token",
            KAFKA_LIBRDKAFKA_SSL_KEY_PASSWORD=SECRET + "-key")
    result = run("check", "--verbose")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].startswith("OK: mode SOCKETIO")
    assert "ORDER_EVENT_MODE" in result.output and "SOCKETIO" in result.output
    assert "********" in result.output
    assert SECRET not in result.output + result.stderr


def test_check_reports_invalid_configuration_with_exit_1_and_no_traceback(cli_env):
    """An invalid configuration exits 1 with every problem on stderr, without a traceback."""
    cli_env(ORDER_EVENT_MODE="KAFKA", KAFKA_PRODUCER_LINGER_MS="soon")
    result = run("check")
    assert result.exit_code == 1
    assert "KAFKA_BOOTSTRAP_SERVERS" in result.stderr
    assert "KAFKA_PRODUCER_LINGER_MS" in result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert isinstance(result.exception, SystemExit)


def test_check_with_an_unreachable_broker_exits_2_in_one_line(cli_env):
    """No broker at the bootstrap address: exit 2, one line naming the servers, no secret."""
    servers = _unused_bootstrap()
    cli_env(ORDER_EVENT_MODE="KAFKA", KAFKA_BOOTSTRAP_SERVERS=servers,
            KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", KAFKA_SASL_MECHANISM="PLAIN",
            KAFKA_SASL_USERNAME="svc", KAFKA_SASL_PASSWORD=SECRET)
    result = run("check", "--timeout", "0.5")
    assert result.exit_code == 2, result.output
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and servers in errors[0] and "cannot reach Kafka" in errors[0]
    assert SECRET not in result.output + result.stderr
    assert "Traceback" not in result.stderr


def test_check_flags_a_spool_directory_that_does_not_exist(cli_env, tmp_path):
    """A spool path in a missing directory is a configuration error (exit 1) found before any
    network request."""
    cli_env(ORDER_EVENT_MODE="KAFKA", KAFKA_BOOTSTRAP_SERVERS=_unused_bootstrap(),
            KAFKA_SPOOL_PATH=str(tmp_path / "missing" / "spool.db"))
    result = run("check")
    assert result.exit_code == 1
    assert "does not exist" in result.stderr


def test_kafka_command_without_the_extra_names_the_install_command(cli_env, monkeypatch):
    """Without confluent-kafka a Kafka command fails with the pip command, not an ImportError."""
    cli_env(KAFKA_BOOTSTRAP_SERVERS=_unused_bootstrap())
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)
    monkeypatch.setitem(sys.modules, "confluent_kafka.admin", None)
    result = run("topics", "describe")
    assert result.exit_code == 1
    assert "pip install 'confluent-kafka>=2.3' (the 'kafka' extra)" in result.stderr
    assert "Traceback" not in result.stderr


def test_sample_env_file_is_current():
    """The checked-in .sample.env is exactly what sample_env() generates
    (regenerate with: openalgo-events sample-env > .sample.env)."""
    assert (ROOT / ".sample.env").read_text() == sample_env()
    assert run("sample-env").output == sample_env()


def test_times_are_read_as_iso_8601_or_relative():
    """--since/--until accept ISO 8601 (with or without offset) and durations ago."""
    assert parse_when("90s", now=1000.0) == 910.0
    assert parse_when("2h", now=10_000.0) == 2800.0
    assert parse_when("1d", now=100_000.0) == 13_600.0
    assert parse_when("2026-01-29T10:30:00Z") == 1769682600.0
    assert parse_when("2026-01-29T16:00:00+05:30") == 1769682600.0
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_when("yesterday-ish")


def test_a_bad_time_is_a_usage_error(cli_env):
    """A malformed --since is reported as a usage error naming the accepted forms."""
    result = run("replay", "--since", "yesterday-ish", "--dry-run")
    assert result.exit_code == 2
    assert "ISO 8601" in result.stderr


def test_spool_status_of_a_missing_file_fails_clearly(cli_env, tmp_path):
    """spool status on a path with no spool exits non-zero and says which path."""
    path = tmp_path / "nothing"
    result = run("spool", "status", "--spool", str(path))
    assert result.exit_code == 1
    assert f"no spool directory at {path}" in result.stderr
    assert "Traceback" not in result.stderr


def _publisher(path: Path, servers: str) -> EventPublisher:
    """A Kafka publisher journaling into the spool at ``path`` (no relay: autostart is off)."""
    return KafkaEventPublisher(servers, "orders", settings=Settings.from_env(
        {"KAFKA_SPOOL_PATH": str(path)}))


def _spool_with_events(path: Path) -> tuple[EventPublisher, list[Envelope]]:
    """A spool as the relay leaves it (its reader, trail and ledger, without Kafka): alice's and
    bob's events of a closed publisher delivered and moved to the trail, and one more of
    alice's pending in the journal of a publisher still open (its journal locked)."""
    servers = _unused_bootstrap()
    first = _publisher(path, servers)
    envelopes = [first.publish_order_event(user, "SBIN-EQ", "BUY", f"ORD{n}", "live")
                 for n, user in enumerate(("alice", "bob"))]
    first.close()
    publisher = _publisher(path, servers)
    envelopes.append(publisher.publish_order_event("alice", "SBIN-EQ", "BUY", "ORD2", "live"))
    spool = SpoolDirectory(str(path), create=False)
    try:
        reader = Reader(spool, {})
        reader.scan(time.monotonic())
        assert sorted(w.live for w in reader.writers.values()) == [False, True]
        for writer in list(reader.writers.values()):
            read = reader.read(writer, 10_000, time.monotonic())
            if not writer.live:
                assert [entry.seq for entry, _ in read] == [1, 2]
                for entry, _ in read:
                    reader.done(writer, entry)
                assert reader.drained(writer)
                retire(spool, writer.name, writer.acked_segment, writer.acked_offset)
                del reader.writers[writer.name]
        fd = spool.open(fmt.LEDGER, os.O_RDWR, create=True)
        try:
            fmt.RecordFile(fd).write({"writers": reader.positions()})
        finally:
            os.close(fd)
        reader.close()
    finally:
        spool.close()
    return publisher, envelopes


def test_spool_status_and_replay_dry_run_read_a_spool_the_app_holds(cli_env, tmp_path):
    """While the app holds its journal, status shows depth and trail, and a dry-run replay
    lists only delivered events of the user in the window, sending nothing and changing
    nothing in the spool."""
    cli_env(OPENALGO_EVENTS_RELAY_AUTOSTART="FALSE")  # no relay: the ledger is the test's
    path = tmp_path / "spool"
    publisher, envelopes = _spool_with_events(path)
    try:
        before = {name: os.stat(name).st_mtime_ns for name in _files(path)}
        status = run("spool", "status", "--spool", str(path))
        assert status.exit_code == 0, status.stderr
        assert "pending events:     1" in status.output
        assert "relay:              not running" in status.output
        trail = re.search(r"trail:\s+(\d+) bytes of \d+ \(KAFKA_TRAIL_MAX_BYTES\), since "
                          r"(\S+)", status.output)
        assert trail and int(trail.group(1)) > 0 and trail.group(2) != "-", status.output
        dry = run("replay", "--spool", str(path), "--since", "1h", "--user", "alice",
                  "--dry-run")
        assert dry.exit_code == 0, dry.stderr
        assert envelopes[0].event_id in dry.output
        assert envelopes[1].event_id not in dry.output  # bob's
        assert envelopes[2].event_id not in dry.output  # still pending
        assert "would re-publish 1 event of user alice" in dry.output
        everyone = run("replay", "--spool", str(path), "--since", "1h", "--dry-run")
        assert everyone.exit_code == 0, everyone.stderr
        assert envelopes[1].event_id in everyone.output
        assert "would re-publish 2 events of all users" in everyone.output
        with Spool(str(path)) as spool:
            assert spool.pending().depth == 1  # the app's spool is untouched
        assert {name: os.stat(name).st_mtime_ns for name in _files(path)} == before
    finally:
        publisher.close()


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.is_socket())


def test_replay_with_an_unreachable_broker_exits_2(cli_env, tmp_path):
    """A replay that cannot reach the broker fails fast with exit 2, naming the servers."""
    cli_env(OPENALGO_EVENTS_RELAY_AUTOSTART="FALSE")
    path = tmp_path / "spool"
    publisher, _ = _spool_with_events(path)
    publisher.close()
    servers = _unused_bootstrap()
    cli_env(KAFKA_BOOTSTRAP_SERVERS=servers)
    result = run("replay", "--spool", str(path), "--since", "1h", "--timeout", "1")
    assert result.exit_code == 2, result.output
    assert servers in result.stderr and "Traceback" not in result.stderr
