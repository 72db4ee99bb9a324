"""Start the OpenAlgo look-alike app as a real server process (gunicorn or its own runner)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import requests

from openalgo_events.devbroker import free_port
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.doubles.openalgo_app"
HOOK = "python:openalgo_events.integrations.gunicorn"


def app_env(tmp: Path, **env: str) -> dict[str, str]:
    """The process environment: inherited, less every openalgo-events variable, plus ``env``."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("KAFKA_", "ORDER_EVENT_", "OPENALGO_EVENTS_"))}
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p)
    return {**base, "PYTHONPATH": path, "KAFKA_SPOOL_PATH": str(tmp / "spool"),
            "KAFKA_CLOSE_TIMEOUT_SECONDS": "1", "OPENALGO_EVENTS_BUS": f"{APP}:bus",
            "OPENALGO_EVENTS_SOCKETIO": f"{APP}:socketio", **env}


@contextmanager
def serve(command: list[str], env: Mapping[str, str], tmp: Path, port: int) -> Iterator[str]:
    """Run ``command`` until the block ends; yields the base URL once /ping answers."""
    log = open(tmp / f"server-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(command, cwd=tmp, env=dict(env), stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert proc.poll() is None, (tmp / f"server-{port}.log").read_text()[-3000:]
            try:
                return requests.get(f"{url}/ping", timeout=1).ok
            # gunicorn's master accepts before the worker serves: a slow boot (a loaded
            # machine) is a read timeout, not a failure
            except (requests.ConnectionError, requests.Timeout):
                return False
        wait_for(up, 30, message=f"server on {port}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def gunicorn(tmp: Path, **env: str) -> tuple[list[str], dict[str, str], int]:
    """The command OpenAlgo runs, with the hook: one eventlet worker."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "gunicorn"), "-c", HOOK, "--worker-class",
               "eventlet", "-w", "1", "-b", f"127.0.0.1:{port}", f"{APP}:app"]
    return command, app_env(tmp, **env), port


def threading_app(tmp: Path, **env: str) -> tuple[list[str], dict[str, str], int]:
    """The app on Flask-SocketIO's own threading server, installed from the environment."""
    port = free_port()
    return ([sys.executable, "-m", APP, str(port)],
            app_env(tmp, LOOKALIKE_ASYNC_MODE="threading", **env), port)
