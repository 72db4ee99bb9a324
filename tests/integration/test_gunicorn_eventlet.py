"""The gunicorn hook in a real eventlet worker, as OpenAlgo runs: events reach Kafka and the
worker's own requests keep their latency, with the broker up and down."""

from __future__ import annotations

import statistics
import threading
import time

import pytest
import requests

from openalgo_events.devbroker import free_port
from tests.integration.openalgo_procs import gunicorn, serve
from tests.support import create_topic, envelope_of, read_topic, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]
PINGS = 200
BATCH = 25


def _measure(url: str) -> dict[str, float]:
    """Ping latency (ms) while another client publishes up to 2,500 events/s through the bus
    (paced: an unpaced loop saturates the one worker even with no Kafka at all)."""
    stop = threading.Event()
    calls = [0]

    def load() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                session.post(f"{url}/publish?n={BATCH}", timeout=10).raise_for_status()
                calls[0] += 1
                stop.wait(0.01)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    wait_for(lambda: calls[0] >= 3, 10, message="load running")
    latencies = []
    with requests.Session() as session:
        for _ in range(PINGS):
            started = time.perf_counter()
            assert session.get(f"{url}/ping", timeout=5).text == "pong"
            latencies.append((time.perf_counter() - started) * 1000)
    stop.set()
    loader.join(15)
    latencies.sort()
    return {"p50": statistics.median(latencies), "p99": latencies[int(PINGS * 0.99) - 1],
            "max": latencies[-1], "events": calls[0] * BATCH}


def _report(name: str, figures: dict[str, float]) -> None:
    print(f"\n[{name}] /ping over {PINGS} requests while {figures['events']:.0f} events were "
          f"published: p50 {figures['p50']:.2f} ms, p99 {figures['p99']:.2f} ms, "
          f"max {figures['max']:.2f} ms")


def _assert_responsive(figures: dict[str, float], baseline: dict[str, float]) -> None:
    """Measured against the SOCKETIO baseline of the same run, with a floor: what this guards
    against is a blocked hub (a librdkafka ``poll(1.0)`` or ``flush`` on the worker's thread),
    which holds every request for a second or more, not the few tens of milliseconds a busy
    2-core machine adds to any run (the relay process and the broker share those cores)."""
    assert figures["p99"] < max(100.0, 4 * baseline["p99"]), (figures, baseline)
    assert figures["max"] < max(2000.0, 4 * baseline["max"]), (figures, baseline)


def test_worker_stays_responsive_and_events_reach_kafka(kafka_bootstrap, topic, tmp_path):
    """Baseline (SOCKETIO), Kafka up and Kafka down: the eventlet worker never freezes, and
    with the broker up every event the adapter took arrives on the topic."""
    create_topic(kafka_bootstrap, topic, 2)
    runs = {
        "SOCKETIO (baseline)": {"ORDER_EVENT_MODE": "SOCKETIO"},
        "KAFKA, broker up": {"ORDER_EVENT_MODE": "KAFKA",
                             "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                             "KAFKA_ORDER_EVENTS_TOPIC": topic},
        "KAFKA, broker down": {"ORDER_EVENT_MODE": "KAFKA",
                               "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
                               "KAFKA_ORDER_EVENTS_TOPIC": topic},
    }
    baseline: dict[str, float] = {}
    for name, env in runs.items():
        run_dir = tmp_path / "-".join(name.replace(",", "").split()[:3]).lower()
        run_dir.mkdir(parents=True)
        command, full_env, port = gunicorn(run_dir, **env)
        with serve(command, full_env, run_dir, port) as url:
            health = requests.get(f"{url}/health", timeout=5).json()
            assert health.get("installed") is False if "SOCKETIO" in name else health["adapter"]
            figures = _measure(url)
            _report(name, figures)
            baseline = baseline or figures  # the first run, SOCKETIO, is the baseline
            _assert_responsive(figures, baseline)
            if name == "KAFKA, broker up":
                taken = requests.get(f"{url}/health", timeout=5).json()["adapter"]["published"]
                assert taken == figures["events"]
                try:
                    wait_for(lambda: requests.get(f"{url}/health", timeout=5).json()[
                        "publisher"]["spool_depth"] == 0, 60, message="spool drained")
                except AssertionError:
                    raise AssertionError(requests.get(f"{url}/health", timeout=5).text) from None
                messages = read_topic(kafka_bootstrap, topic, taken)
                assert len(messages) == taken
                first = envelope_of(messages[0])
                assert first["event_type"] == "order_event"
                assert first["data"]["bus_topic"] == "order.placed"
            if name == "KAFKA, broker down":
                # counted by the relay process, whose status follows within a moment
                events = figures["events"]
                wait_for(lambda: requests.get(f"{url}/health", timeout=5).json()["publisher"][
                    "spool_depth"] == events, 10, message="every event spooled")  # noqa: B023
