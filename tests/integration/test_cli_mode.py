"""`openalgo-events mode` as the docs print it: the README's commands against the reference
app as `scripts/demo` starts it, `mode --help`'s examples, and docs/openalgo.md's rollback
from OpenAlgo's directory (the token read from its `.env`), each run as a real command."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dotenv import dotenv_values
from flask import Flask
from flask_socketio import SocketIO

from openalgo_events import Settings
from openalgo_events.demo import DemoServer
from openalgo_events.integrations.flask import OpenAlgoEvents

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def operator_env(**extra: str) -> dict[str, str]:
    """An operator's shell: none of the package's variables, the venv's commands on PATH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KAFKA_", "ORDER_EVENT_", "OPENALGO_EVENTS_"))}
    return {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", **extra}


@contextmanager
def demo(*args: str, cwd: Path) -> Iterator[str]:
    """`openalgo-events demo ARGS` as scripts/demo runs it, in ``cwd``; yields its URL."""
    child = subprocess.Popen([str(BIN / "openalgo-events"), "demo", "--port", "0", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             cwd=cwd, env=operator_env(PYTHONUNBUFFERED="1"))
    try:
        lines = []
        assert child.stdout is not None
        for line in child.stdout:  # printed at start; the test's timeout bounds the wait
            lines.append(line)
            if "Ctrl-C stops it" in line:
                break
        url = re.search(r"reference app: (http://127\.0\.0\.1:\d+)", "".join(lines))
        assert url, lines
        yield url.group(1)
    finally:
        child.send_signal(signal.SIGTERM)
        child.communicate(timeout=30)


def run_line(line: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", line], cwd=cwd, text=True,
                          capture_output=True, timeout=60, env=operator_env(**env))


def test_the_readmes_mode_commands_switch_the_demo_as_started(tmp_path):
    """The README's mode commands, run as printed (only the demo's port set, through the
    option's variable), switch `scripts/demo --with-broker` to KAFKA, to BOTH at 10% and back
    to SOCKETIO, and the plain demo to SOCKETIO; the plain demo refuses KAFKA, saying why."""
    readme = ROOT / "README.md"
    [block] = re.findall(r"mode_commands_switch_the_demo_as_started -->\n```bash\n(.*?)```",
                         readme.read_text(), re.S)
    commands = [x for x in block.splitlines() if x and not x.startswith("#")]
    assert len(commands) == 3, block
    with demo("--with-broker", cwd=tmp_path) as url:
        done = [run_line(command, tmp_path, OPENALGO_EVENTS_MODE_URL=url)
                for command in commands]
    assert [(d.returncode, d.stdout.strip()) for d in done] == [
        (0, "mode KAFKA, rollout 100% (was BOTH, 100%)"),
        (0, "mode BOTH, rollout 10% (was KAFKA, 100%)"),
        (0, "mode SOCKETIO, rollout 10% (was BOTH, 10%)")], [d.stderr for d in done]
    with demo(cwd=tmp_path) as url:
        back = run_line(commands[-1], tmp_path, OPENALGO_EVENTS_MODE_URL=url)
        refused = run_line(commands[0], tmp_path, OPENALGO_EVENTS_MODE_URL=url)
    assert (back.returncode, back.stdout.strip()) == (
        0, "mode SOCKETIO, rollout 100% (was SOCKETIO, 100%)"), back.stderr
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"Error: {url}/openalgo-events/mode answered 400: "
                                     "ORDER_EVENT_MODE=KAFKA needs Kafka settings"), refused


@pytest.fixture
def openalgo(kafka_bootstrap: str, topic: str, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory with an OpenAlgo-style `.env` (BOTH, the test cluster, an admin token) and
    an app that read it, mounting the extension as the gunicorn hook does; yields the
    directory and the app's URL."""
    directory = tmp_path / "openalgo"
    directory.mkdir()
    (directory / ".env").write_text(
        "ORDER_EVENT_MODE = 'BOTH'\n"
        f"KAFKA_BOOTSTRAP_SERVERS = '{kafka_bootstrap}'\n"
        f"KAFKA_ORDER_EVENTS_TOPIC = '{topic}'\n"
        f"KAFKA_SPOOL_PATH = '{directory / 'openalgo_events_spool'}'\n"
        "ORDER_EVENT_ADMIN_TOKEN = 'a-long-random-t0ken'\n")
    values = {k: v for k, v in dotenv_values(directory / ".env").items() if v is not None}
    app = Flask(__name__)
    state = OpenAlgoEvents().init_app(app, SocketIO(app, async_mode="threading"),
                                      Settings.from_env(values))
    try:
        with DemoServer(app) as server:
            yield directory, server.url
    finally:
        state.close(5)


def test_the_openalgo_guide_rollback_runs_as_printed(openalgo):
    """docs/openalgo.md's rollback commands, run as printed from OpenAlgo's directory (only its
    path and gunicorn's address replaced), take the token from `.env` there and switch the
    running app from BOTH to SOCKETIO."""
    directory, url = openalgo
    guide = (ROOT / "docs" / "openalgo.md").read_text()
    [block] = re.findall(r"openalgo_guide_rollback_runs_as_printed -->\n```bash\n(.*?)```",
                         guide, re.S)
    script = (block.replace("cd /path/to/openalgo", f"cd {directory}")
              .replace(".venv/bin/openalgo-events", str(BIN / "openalgo-events"))
              .replace("http://127.0.0.1:5000", url))
    assert script.count(str(directory)) == 1 and url in script, block
    done = run_line(script, ROOT)
    assert (done.returncode, done.stdout.strip()) == (
        0, "mode SOCKETIO, rollout 100% (was BOTH, 100%)"), done.stderr


def test_the_examples_of_mode_help_run_as_printed(openalgo, tmp_path):
    """Each example of `openalgo-events mode --help` works as printed: the first against the
    reference app started with --with-broker (its URL through the option's variable), the
    second from OpenAlgo's directory against its app (gunicorn's address replaced)."""
    directory, url = openalgo
    done = subprocess.run([str(BIN / "openalgo-events"), "mode", "--help"], text=True,
                          capture_output=True, timeout=30, env=operator_env())
    examples = done.stdout.split("Examples:\n", 1)[1].split("\n\n", 1)[0]
    commands = [x.strip() for x in examples.splitlines() if not x.strip().startswith("#")]
    assert len(commands) == 2 and "--with-broker" in examples, examples
    with demo("--with-broker", cwd=tmp_path) as demo_url:
        first = run_line(commands[0], tmp_path, OPENALGO_EVENTS_MODE_URL=demo_url)
    assert (first.returncode, first.stdout.strip()) == (
        0, "mode KAFKA, rollout 100% (was BOTH, 100%)"), first.stderr
    second = run_line(commands[1].replace("http://127.0.0.1:5000", url), directory)
    assert (second.returncode, second.stdout.strip()) == (
        0, "mode SOCKETIO, rollout 100% (was BOTH, 100%)"), second.stderr
