"""Inside an eventlet look-alike of OpenAlgo's worker (gunicorn's eventlet worker, the hook,
root handlers made after monkey-patching with OpenAlgo's stringify-and-redact filter): Socket.IO
publishes from green and real OS threads all arrive in order; with the bridge and the inbound
consumer running through a broker outage, no log record reaches a host handler from a foreign
thread, nothing logs an error, delivery resumes and SIGTERM stops the worker quickly."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from engineio import client as eio_client
from engineio import payload

from openalgo_events.devbroker import free_port, port_open, tansu_binary
from tests.integration.inbound_support import esb_message, produce
from tests.integration.openalgo_procs import HOOK, app_env
from tests.integration.tcp_proxy import TcpProxy
from tests.sio_support import Listener
from tests.support import create_topic, wait_for

APP = "tests.doubles.eventlet_host_app"
ORDERS = ("os-first", "green-first", "interleaved")
N = 50


@pytest.fixture(autouse=True)
def browser_like_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """python-socketio's client, made to behave like a browser's for these tests.

    Its engine.io layer refuses a polling response of more than 16 packets (a guard meant for
    servers; a burst of emits exceeds it and the client drops the connection), and it runs each
    message's handler on a thread of its own, so two events can be recorded out of the order
    they arrived in. Browsers do neither.
    """
    monkeypatch.setattr(payload.Payload, "max_decode_packets", 10_000)
    trigger = eio_client.Client._trigger_event

    def in_arrival_order(self: Any, event: str, *args: Any, **kwargs: Any) -> Any:
        if event == "message":
            kwargs["run_async"] = False
        return trigger(self, event, *args, **kwargs)

    monkeypatch.setattr(eio_client.Client, "_trigger_event", in_arrival_order)
BAD = ("Logging error", "greenlet.error", "Cannot switch", "Traceback")


class Worker:
    """One gunicorn master with one eventlet worker serving the look-alike."""

    def __init__(self, tmp: Path, **env: str) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "server.log"
        self.took: float | None = None
        command = [str(Path(sys.executable).parent / "gunicorn"), "-c", HOOK, "--worker-class",
                   "eventlet", "-w", "1", "-b", f"127.0.0.1:{self.port}", f"{APP}:app"]
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        # A session of its own: on a failure the master and its worker are killed together
        # (a SIGKILLed master leaves its worker running).
        self.proc = subprocess.Popen(command, cwd=tmp, env=app_env(
            tmp, OPENALGO_EVENTS_BUS="tests.doubles.openalgo_app:bus",
            OPENALGO_EVENTS_SOCKETIO="tests.doubles.openalgo_app:socketio", **env),
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)

        def up() -> bool:
            assert self.proc.poll() is None, self.log()
            try:
                return requests.get(f"{self.url}/ping", timeout=1).ok
            except (requests.ConnectionError, requests.Timeout):  # the worker still booting
                return False
        try:
            wait_for(up, 30, message="gunicorn up")
        except BaseException:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL the master and its worker (the whole session), then close the log."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> float:
        """SIGTERM to the master; the seconds until the master and its worker are gone."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(20)

        def worker_gone() -> bool:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return True
            return False
        wait_for(worker_gone, 20, message="the worker gone after SIGTERM")
        return time.monotonic() - started


@contextmanager
def worker(tmp: Path, **env: str) -> Iterator[Worker]:
    """The running worker; when the block ends normally it gets SIGTERM and ``took`` says how
    many seconds the master took to exit (on an error it is killed)."""
    running = Worker(tmp, **env)
    try:
        yield running
        running.took = running.stop()
    finally:
        running.kill()  # whatever is left (nothing after a clean stop)


def _messages(listener: Listener, tag: str) -> list[str]:
    return [p["message"] for e, p in listener.events("order_notification")
            if p["message"].startswith(f"{tag}:")]


def _assert_clean(running: Worker) -> None:
    text = running.log()
    for bad in BAD:
        assert bad not in text, text[-4000:]


@pytest.mark.parametrize("async_mode", ["threading", "eventlet"])
def test_publishes_from_green_and_os_threads_all_arrive_in_order(tmp_path, async_mode):
    """Whichever thread publishes first (a real OS thread or a green thread), and interleaved,
    every event reaches a polling and a websocket client in publish order, no log record of a
    real thread reaches the host's handlers off the hub, and SIGTERM stops in under 10 s; with
    the Socket.IO server in OpenAlgo's ``async_mode="threading"`` (green under the eventlet
    worker) and in ``eventlet`` mode."""
    with worker(tmp_path, ORDER_EVENT_MODE="SOCKETIO",
                LOOKALIKE_ASYNC_MODE=async_mode) as running, \
            Listener(running.url, ["polling"]) as polling, \
            Listener(running.url, ["websocket"]) as websocket:
        for order in ORDERS:
            reply = requests.post(f"{running.url}/sio/publish",
                                  params={"order": order, "n": N}, timeout=10)
            assert reply.json() == {"published": 2 * N}
            for listener in (polling, websocket):
                wait_for(lambda listener=listener, order=order:
                         len(_messages(listener, order)) >= 2 * N, 20,
                         message=f"{order} over {listener.transports}")
                got = _messages(listener, order)
                seqs = [int(m.split(":")[1]) for m in got]
                assert len(got) == 2 * N and seqs == sorted(seqs), got
                sources = [m.split(":")[2] for m in got]
                assert sources.count("os") == N and sources.count("green") == N
                if order != "interleaved":
                    first = "os" if order == "os-first" else "green"
                    assert sources[:N] == [first] * N
        state = requests.get(f"{running.url}/lookalike", timeout=5).json()
        assert state["foreign"] == []
        assert state["next_seq"] == 2 * N * len(ORDERS)
    print(f"\n[green and OS threads] SIGTERM to exit: {running.took:.2f} s")
    assert running.took is not None and running.took < 10, running.took
    _assert_clean(running)
    text = (tmp_path / "openalgo.log").read_text()
    # The real thread's record reached the host's handlers (on the hub), formatted, and the
    # host's redaction filter could still do its work on it.
    line = f"published {N} events from a real OS thread, apikey=[REDACTED]"
    assert text.count(line) == len(ORDERS), text[-3000:]
    assert "secret123" not in text


@contextmanager
def _tansu(listen: int, advertise: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A Tansu broker listening on ``listen`` that tells clients to connect to ``advertise``
    (the proxy), so every client connection goes through the proxy."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{listen}",
             "--advertised-listener-url", f"tcp://127.0.0.1:{advertise}"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_for(lambda: port_open("127.0.0.1", listen), 10, message="tansu listening")
            yield proc
        finally:
            proc.kill()
            proc.wait(10)


def _order_ids(listener: Listener, prefix: str) -> list[str]:
    return [p["orderid"] for _, p in listener.events("order_event")
            if str(p.get("orderid", "")).startswith(prefix)]


@pytest.mark.broker
@pytest.mark.slow
def test_broker_cut_and_restored_under_eventlet(tmp_path):
    """KAFKA mode with the bridge and the inbound consumer running: the broker is cut (every
    connection dropped, new ones refused) and restored; browsers get every order event once
    the broker is back, so does an ESB notification from the inbound consumer, nothing prints
    a logging or greenlet error, no record reaches a host handler off the hub, and SIGTERM
    stops the worker in under 10 s."""
    broker_port, proxy_port = free_port(), free_port()
    bootstrap = f"127.0.0.1:{proxy_port}"
    with _tansu(broker_port, proxy_port, tmp_path / "tansu.log"), \
            TcpProxy(broker_port, proxy_port) as proxy:
        create_topic(bootstrap, "orders-cut", 2)
        create_topic(bootstrap, "esb-cut", 1)
        env: dict[str, Any] = {
            "ORDER_EVENT_MODE": "KAFKA", "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_ORDER_EVENTS_TOPIC": "orders-cut", "KAFKA_ESB_EVENTS_TOPIC": "esb-cut",
            "KAFKA_CONSUMER_ENABLED": "TRUE", "KAFKA_CONSUMER_GROUP": "esb-cut-group",
            "KAFKA_CONSUMER_AUTO_OFFSET_RESET": "earliest",
            "LOOKALIKE_ASYNC_MODE": "threading"}  # OpenAlgo's own setting
        with worker(tmp_path, **env) as running, Listener(running.url, ["polling"]) as browser:
            def bridge_ready() -> bool:
                body = requests.get(f"{running.url}/openalgo-events/health", timeout=5).json()
                return bool(body.get("bridge", {}).get("healthy"))
            wait_for(bridge_ready, 30, message="bridge assigned")
            requests.post(f"{running.url}/publish", params={"n": 5, "orderid": "UP"}, timeout=10)
            wait_for(lambda: len(_order_ids(browser, "UP-")) == 5, 30, message="before the cut")
            proxy.cut()
            requests.post(f"{running.url}/publish", params={"n": 5, "orderid": "CUT"},
                          timeout=10)
            # librdkafka notices the dropped connections and retries against a refused port
            wait_for(lambda: "bridge lost the brokers" in (tmp_path / "openalgo.log").read_text(),
                     30, message="the bridge saw the outage")
            assert requests.get(f"{running.url}/ping", timeout=5).text == "pong"
            proxy.restore()
            wait_for(lambda: len(_order_ids(browser, "CUT-")) == 5, 90,
                     message="delivery resumed after the cut")
            assert sorted(_order_ids(browser, "UP-")) == [f"UP-{i}" for i in range(5)]
            # the inbound consumer delivers again too: an ESB acknowledgement reaches the page
            produce(bootstrap, "esb-cut", esb_message(
                "order_acknowledgment", "alice",
                {"orderid": "ESB-1", "status": "acknowledged", "source": "ESB"}))
            wait_for(lambda: any(p.get("orderid") == "ESB-1"
                                 for _, p in browser.events("order_notification")), 60,
                     message="the inbound consumer's notification after the cut")
            wait_for(lambda: "bridge reaches the brokers again" in (
                tmp_path / "openalgo.log").read_text(), 30, message="the bridge saw the return")
            state = requests.get(f"{running.url}/lookalike", timeout=5).json()
            assert state["foreign"] == []
            text = (tmp_path / "openalgo.log").read_text()
            # one line per state change, not one per librdkafka error
            assert text.count("bridge lost the brokers") == 1, text[-3000:]
        print(f"\n[broker cut] SIGTERM to exit: {running.took:.2f} s")
        assert running.took is not None and running.took < 10, running.took
        _assert_clean(running)


LOGGING_APP = Path(__file__).with_name("eventlet_logging_app.py")


def _logging_run(mode: str, tmp: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(LOGGING_APP), mode], capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).resolve().parents[2],
                          env=app_env(tmp))
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stdout[-2000:] + done.stderr[-2000:]
    result: dict[str, Any] = json.loads(lines[-1])
    result["stderr"] = done.stderr
    return result


def test_real_thread_logging_while_a_green_thread_holds_the_handler_lock(tmp_path):
    """A real thread that logs while a green thread holds the host handler's green lock blocks
    for good without the hand-off (the measured failure); with it, the thread finishes at once
    and every record reaches the handler, in order, once the lock is free."""
    unguarded = _logging_run("unguarded", tmp_path)
    assert unguarded["finished"] is False and unguarded["lines"] == []
    guarded = _logging_run("guarded", tmp_path)
    assert guarded["finished"] is True and guarded["errors"] == []
    assert guarded["lines"] == [f"from a real thread {i}" for i in range(20)]
    assert "greenlet.error" not in guarded["stderr"]


RING_A_FULL_DOORBELL = """
import eventlet
eventlet.monkey_patch()
import sys, time
from openalgo_events.spool.directory import Bell, SpoolDirectory, bind_doorbell
spool = SpoolDirectory(sys.argv[1])
relay_side = bind_doorbell(spool)  # never read: its queue is full after a few datagrams
bell = Bell(spool)
started = time.monotonic()
for _ in range(100):
    bell.ring(b"writer")
print(f"rang 100 times in {time.monotonic() - started:.3f} s", flush=True)
"""


def test_a_ring_of_a_full_doorbell_never_waits_under_eventlet(tmp_path):
    """Under eventlet's monkey-patching, ringing a doorbell whose queue is full (a relay busy, or
    not reading) returns at once: a publish rings while it holds the journal's lock, so a ring
    that waited on the hub froze the whole worker under load."""
    done = subprocess.run([sys.executable, "-c", RING_A_FULL_DOORBELL, str(tmp_path / "spool")],
                          capture_output=True, text=True, timeout=20,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert done.returncode == 0, done.stderr
    took = float(done.stdout.split()[4])
    assert took < 1.0, done.stdout
