"""The relay process under gunicorn, through the hook, as OpenAlgo runs (issue 13).

The master starts and supervises one keeper, which runs the relay and restarts it; eventlet
workers only journal (they inherit ``OPENALGO_EVENTS_RELAY_AUTOSTART=FALSE``). Attacked here with
``--preload`` and 3 workers, kill -9 of the relay, of the worker, of everything at once, and a
broker frozen for 20 s under 100 events/s with OpenAlgo's logging set-up in the worker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from openalgo_events.devbroker import DevBroker
from openalgo_events.spool import Spool
from openalgo_events.spool import format as fmt
from tests.integration.openalgo_procs import gunicorn
from tests.integration.relay_support import keeper_pid, relay_pid, relay_processes
from tests.support import TopicCollector, create_topic, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def one_keeper_of_the_master(app: App) -> int:
    """The spool's one keeper, a child of gunicorn's master, and its one relay, the keeper's
    child; no relay.log (a publisher that started a keeper of its own would have made it)."""
    assert app.proc is not None
    keeper, relay = wait_for(lambda: (k := keeper_pid(app.spool)) and (r := relay_pid(app.spool))
                             and (k, r), 20, message="the keeper and its relay")
    assert sorted(relay_processes(app.spool)) == sorted([keeper, relay])
    assert relay_processes(app.spool, keepers=False) == [relay]
    assert parent_of(keeper) == app.proc.pid and parent_of(relay) == keeper
    assert not os.path.exists(os.path.join(app.spool, fmt.RELAY_LOG))
    return keeper


class App:
    """gunicorn with the hook, started and stopped by the test itself."""

    def __init__(self, tmp: Path, *extra: str, workers: int = 1, **env: str) -> None:
        self.tmp = tmp
        command, self.env, self.port = gunicorn(tmp, **env)
        command[command.index("-w") + 1] = str(workers)
        self.command = [*command[:-1], *extra, command[-1]]
        self.url = f"http://127.0.0.1:{self.port}"
        self.spool = self.env["KAFKA_SPOOL_PATH"]
        self.log_path = tmp / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> App:
        log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self._log = log
        self.proc = subprocess.Popen(self.command, cwd=self.tmp, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.text()[-3000:]
            try:
                return requests.get(f"{self.url}/ping", timeout=1).ok
            except (requests.ConnectionError, requests.Timeout):  # not serving yet
                return False

        wait_for(up, 30, message="gunicorn up")
        return self

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)],
                             capture_output=True, text=True).stdout.split()
        return [int(p) for p in out if int(p) not in relay_processes(self.spool)]

    def stop(self) -> float:
        """SIGTERM the master; seconds until master, workers and relay are all gone."""
        started = time.monotonic()
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            wait_for(lambda: not relay_processes(self.spool), 30,
                     message=lambda: f"no relay left ({relay_processes(self.spool)} run)")
        finally:
            self._log.close()
        return time.monotonic() - started

    def kill_all(self) -> None:
        """kill -9 of the master, its workers and the relay at the same moment."""
        assert self.proc is not None
        victims = [*self.workers(), *relay_processes(self.spool), self.proc.pid]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()


@contextlib.contextmanager
def running(app: App) -> Iterator[App]:
    try:
        app.start()
        yield app
    finally:
        if app.proc is not None and app.proc.poll() is None:
            app.stop()
        for pid in relay_processes(app.spool):  # started by this test, if any is left
            os.kill(pid, signal.SIGKILL)


class Loader:
    """Publishes through ``/publish_direct`` at ``rate`` per second; records every event id the
    app acknowledged (its ``publish`` returned), ignoring refused or cut requests."""

    def __init__(self, url: str, rate: float = 100.0, threads: int = 1) -> None:
        self.url, self.rate = url, rate
        self.acked: list[str] = []
        self.pids: set[int] = set()
        self.stop = threading.Event()
        self._count = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        while not self.stop.is_set():
            with self._lock:
                n = self._count
                self._count += 1
            due = started + n / self.rate
            self.stop.wait(max(0.0, due - time.monotonic()))
            try:
                answer = requests.post(f"{self.url}/publish_direct?orderid=D{n}&user=u{n % 5}",
                                       timeout=5)
            except requests.RequestException:
                continue
            if answer.status_code == 200:
                body = answer.json()
                with self._lock:
                    self.acked.append(body["event_id"])
                    self.pids.add(body["pid"])

    def finish(self) -> list[str]:
        self.stop.set()
        for thread in self._threads:
            thread.join(15)
        return list(self.acked)


def test_preload_three_workers_share_one_relay(kafka_bootstrap, topic, tmp_path):
    """gunicorn --preload with 3 eventlet workers: one relay process, one journal per worker,
    and every acknowledged event on the topic."""
    create_topic(kafka_bootstrap, topic, 3)
    collector = TopicCollector(kafka_bootstrap, topic)
    app = App(tmp_path, "--preload", workers=3, ORDER_EVENT_MODE="KAFKA",
              KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, KAFKA_ORDER_EVENTS_TOPIC=topic)
    try:
        with running(app):
            loader = Loader(app.url, rate=150, threads=6)
            wait_for(lambda: len(loader.pids) == 3 or len(loader.acked) >= 600, 30,
                     message="requests served by the workers")
            acked = loader.finish()
            one_keeper_of_the_master(app)

            def writer_pids() -> set[int]:
                with Spool(app.spool) as spool:  # the writers the relay acknowledged
                    return {int(name.split("-")[0]) for name in spool.ledger()}

            wait_for(lambda: writer_pids() >= loader.pids, 5, message="a journal per worker")
            assert len(loader.pids) >= 2  # the journals of several workers, one relay
            wait_for(lambda: set(acked) <= set(collector.event_ids()), 30,
                     message="every acknowledged event on the topic")
    finally:
        collector.stop()


def test_preload_publisher_built_before_fork_writes_one_journal_per_worker(
        kafka_bootstrap, topic, tmp_path):
    """A publisher built and used in gunicorn's master at import (--preload), then used by 3
    forked workers: each worker writes its own journal, never the master's, and every event
    arrives, through one relay."""
    create_topic(kafka_bootstrap, topic, 3)
    collector = TopicCollector(kafka_bootstrap, topic)
    app = App(tmp_path, "--preload", workers=3, ORDER_EVENT_MODE="KAFKA",
              LOOKALIKE_PUBLISHER_AT_IMPORT="1", KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
              KAFKA_ORDER_EVENTS_TOPIC=topic)
    answers: list[dict[str, object]] = []
    lock = threading.Lock()

    def load(n: int) -> None:
        with requests.Session() as session:
            for i in range(n, 300, 6):
                body = session.post(f"{app.url}/publish_import?orderid=I{i}", timeout=5).json()
                with lock:
                    answers.append(body)

    try:
        with running(app):
            threads = [threading.Thread(target=load, args=(n,)) for n in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert len(answers) == 300
            by_pid: dict[object, set[object]] = {}
            for body in answers:
                by_pid.setdefault(body["pid"], set()).add(body["writer"])
            assert all(len(writers) == 1 for writers in by_pid.values())  # one journal each
            writers = [w for ws in by_pid.values() for w in ws]
            assert len(set(writers)) == len(by_pid)  # no two workers share one
            assert not [w for w in writers if str(w).startswith(f"{app.proc.pid}-")]  # type: ignore[union-attr]
            one_keeper_of_the_master(app)
            ids = {str(body["event_id"]) for body in answers} | {str(answers[0]["import_event"])}
            wait_for(lambda: ids <= set(collector.event_ids()), 30,
                     message="the master's and every worker's events on the topic")
    finally:
        collector.stop()


def test_kill_9_of_relay_worker_and_everything_loses_nothing(kafka_bootstrap, topic, tmp_path):
    """At 100 events/s: kill -9 of the relay (its keeper restarts it and says so in the master's
    log), of the worker (gunicorn restarts it), then of master, worker, keeper and relay at
    once and a new start: every event the app acknowledged arrives."""
    create_topic(kafka_bootstrap, topic)
    collector = TopicCollector(kafka_bootstrap, topic)
    env = {"ORDER_EVENT_MODE": "KAFKA", "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "KAFKA_ORDER_EVENTS_TOPIC": topic}
    app = App(tmp_path, **env)
    acked: list[str] = []
    try:
        with running(app):
            loader = Loader(app.url)
            wait_for(lambda: len(loader.acked) >= 150, 20, message="events flowing")
            first = wait_for(lambda: relay_pid(app.spool), 10, message="the relay")
            os.kill(first, signal.SIGKILL)
            second = wait_for(lambda: (p := relay_pid(app.spool)) and p != first and p, 20,
                              message="the keeper to restart the relay")
            # The keeper reaps the relay itself: its line says how the relay ended, on the
            # master's output (the keeper's stderr) while the master runs.
            wait_for(lambda: f"the relay (pid {first}) killed by SIGKILL" in app.text(), 10,
                     message="the keeper's line in the master's log")
            one_keeper_of_the_master(app)
            count = len(loader.acked)
            wait_for(lambda: len(loader.acked) >= count + 150, 20, message="events flowing")
            [worker] = app.workers()
            os.kill(worker, signal.SIGKILL)
            wait_for(lambda: (w := app.workers()) and w != [worker], 20,
                     message="gunicorn to restart the worker")
            count = len(loader.acked)
            wait_for(lambda: len(loader.acked) >= count + 150, 30, message="events flowing")
            app.kill_all()
            acked += loader.finish()
            assert second
            # the killed relay releases its lock as it exits, a moment after the signal
            wait_for(lambda: relay_pid(app.spool) is None, 10, message="the killed relay gone")
        again = App(tmp_path, **env)
        with running(again):
            wait_for(lambda: set(acked) <= set(collector.event_ids()), 60,
                     message="every acknowledged event on the topic")
            assert again.stop() < 10
    finally:
        collector.stop()
    assert "Traceback" not in app.text().split("Booting worker")[0]  # master's start was clean


def test_kill_9_of_the_keeper_leaves_no_relay_behind(kafka_bootstrap, topic, tmp_path):
    """At 100 events/s, kill -9 of the relay's keeper: the master says so and starts another,
    every acknowledged event arrives, and SIGTERM of the master leaves no relay running (the
    dead keeper's relay is not left to run for ever)."""
    create_topic(kafka_bootstrap, topic)
    collector = TopicCollector(kafka_bootstrap, topic)
    app = App(tmp_path, ORDER_EVENT_MODE="KAFKA", KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
              KAFKA_ORDER_EVENTS_TOPIC=topic)
    try:
        with running(app):
            loader = Loader(app.url)
            wait_for(lambda: len(loader.acked) >= 150, 20, message="events flowing")
            first = one_keeper_of_the_master(app)
            os.kill(first, signal.SIGKILL)
            wait_for(lambda: f"the relay's keeper (pid {first}) is gone" in app.text(), 10,
                     message="the supervisor's line in the master's log")
            wait_for(lambda: (k := keeper_pid(app.spool)) and k != first, 20,
                     message="the master to start another keeper")
            count = len(loader.acked)
            wait_for(lambda: len(loader.acked) >= count + 150, 20, message="events flowing")
            acked = loader.finish()
            wait_for(lambda: set(acked) <= set(collector.event_ids()), 30,
                     message="every acknowledged event on the topic")
            took = app.stop()  # master, workers, keepers and relays all gone
        assert took < 15, f"everything gone only after {took:.1f} s"
    finally:
        collector.stop()


def test_eventlet_host_survives_a_frozen_broker(topic, tmp_path):
    """An eventlet worker with OpenAlgo's logging, 100 events/s through the bus, the broker frozen
    for 20 s: every event arrives, the spool drains, /ping keeps its latency, SIGTERM stops
    everything in under 10 s, and the log has no logging or greenlet error."""
    with DevBroker() as broker:
        create_topic(broker.bootstrap_servers, topic)
        collector = TopicCollector(broker.bootstrap_servers, topic)
        app = App(tmp_path, ORDER_EVENT_MODE="KAFKA", LOOKALIKE_OPENALGO_LOGGING="1",
                  KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers, KAFKA_ORDER_EVENTS_TOPIC=topic,
                  KAFKA_STALL_TIMEOUT_SECONDS="5", KAFKA_CLOSE_TIMEOUT_SECONDS="5")
        sent: list[str] = []
        pings: list[float] = []
        try:
            app.start()
            stop = threading.Event()

            def load() -> None:
                with requests.Session() as session:
                    n, started = 0, time.monotonic()
                    while not stop.is_set():
                        stop.wait(max(0.0, started + n / 100 - time.monotonic()))
                        answer = session.post(f"{app.url}/publish?n=1&orderid=F{n}", timeout=5)
                        if answer.ok:
                            sent.append(f"F{n}-0")
                        n += 1

            loader = threading.Thread(target=load, daemon=True)
            loader.start()
            wait_for(lambda: len(sent) >= 300, 20, message="events flowing")
            os.kill(broker.process.pid, signal.SIGSTOP)
            frozen = time.monotonic()
            with requests.Session() as session:
                while time.monotonic() - frozen < 20:
                    started = time.perf_counter()
                    assert session.get(f"{app.url}/ping", timeout=5).text == "pong"
                    pings.append((time.perf_counter() - started) * 1000)
                    time.sleep(0.05)
            os.kill(broker.process.pid, signal.SIGCONT)
            wait_for(lambda: len(sent) >= 3000, 30, message="30 s of events")
            stop.set()
            loader.join(10)

            def depth() -> int:
                return int(requests.get(f"{app.url}/health", timeout=5).json()["publisher"][
                    "spool_depth"] or 0)

            wait_for(lambda: depth() == 0, 30, message="spool depth back to 0")
            wait_for(lambda: set(sent) <= {m for m in collector_orderids(collector)}, 60,
                     message="every event on the topic")
            took = app.stop()
        finally:
            collector.stop()
            with contextlib.suppress(ProcessLookupError):
                os.kill(broker.process.pid, signal.SIGCONT)
            if app.proc is not None and app.proc.poll() is None:
                app.proc.kill()
                app.proc.wait(10)
            for pid in relay_processes(app.spool):
                os.kill(pid, signal.SIGKILL)
    pings.sort()
    print(f"\nbroker frozen 20 s: /ping p50 {statistics.median(pings):.1f} ms, "
          f"p99 {pings[int(len(pings) * 0.99) - 1]:.1f} ms; SIGTERM to all gone {took:.1f} s")
    # A blocked hub (the failure this guards against) holds requests for seconds; 250 ms leaves
    # room for a busy 2-core machine running the broker, the relay and this test beside it.
    assert pings[int(len(pings) * 0.99) - 1] < 250
    assert took < 10
    log = app.text()
    assert "Logging error" not in log
    assert "greenlet" not in log and "Cannot switch" not in log


def collector_orderids(collector: TopicCollector) -> list[str]:
    import json

    return [json.loads(value)["data"]["orderid"] for _, _, _, value, _ in collector.messages]
