"""The zero-edit install (gunicorn's eventlet worker, the hook, no change to the app) answers
the operations routes: health, metrics and POST /mode, and a switch by POST /mode changes what
reaches Kafka and who emits to the browsers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests
from engineio import payload

from tests.integration.openalgo_procs import gunicorn, serve
from tests.sio_support import Listener
from tests.support import create_topic, read_topic, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture(autouse=True)
def many_packets_per_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    """python-engineio's client refuses a polling response of more than 16 packets (a guard
    meant for servers; browsers have none)."""
    monkeypatch.setattr(payload.Payload, "max_decode_packets", 10_000)
TOKEN = "zero-edit-admin-token"


def _order_ids(listener: Listener, prefix: str) -> list[str]:
    return [p["orderid"] for _, p in listener.events("order_event")
            if str(p.get("orderid", "")).startswith(prefix)]


def _parent(pid: int) -> int | None:
    """The parent's pid of a live process (Linux /proc), None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_zero_edit_install_answers_health_metrics_and_mode(kafka_bootstrap, topic, tmp_path):
    """Health (200, KAFKA mode, bridge healthy, the spool depth and broker state from the status
    of the relay the master's keeper runs), Prometheus metrics (the same figures) and POST /mode
    answer in a worker started only through the hook; after a switch to SOCKETIO the app's own
    toasts reach the browser once (not held back for a bridge that gets nothing) and Kafka gets
    nothing new."""
    create_topic(kafka_bootstrap, topic, 1)
    command, env, port = gunicorn(tmp_path, ORDER_EVENT_MODE="KAFKA",
                                  KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
                                  KAFKA_ORDER_EVENTS_TOPIC=topic,
                                  ORDER_EVENT_ADMIN_TOKEN=TOKEN,
                                  LOOKALIKE_ASYNC_MODE="threading")  # as OpenAlgo's instance
    with serve(command, env, tmp_path, port) as url, Listener(url, ["polling"]) as browser:
        prefix = f"{url}/openalgo-events"
        wait_for(lambda: requests.get(f"{prefix}/health", timeout=5).status_code == 200, 30,
                 message="healthy")
        health = requests.get(f"{prefix}/health", timeout=5).json()
        assert health["mode"] == "KAFKA" and health["bridge"]["healthy"] is True
        requests.post(f"{url}/publish", params={"n": 3, "orderid": "K"}, timeout=10)
        wait_for(lambda: len(_order_ids(browser, "K-")) == 3, 30, message="bridge emits")
        # Health comes from the relay's status: the relay of the keeper the master supervises
        # (when_ready), not one of the worker's own, has taken the three events off the spool.
        wait_for(lambda: requests.get(f"{prefix}/health", timeout=5).json()["spool_depth"] == 0,
                 30, message="the relay's status: spool drained")
        kafka = requests.get(f"{prefix}/health", timeout=5).json()["transports"]["kafka"]
        assert kafka["relay_running"] is True and kafka["broker_reachable"] is True, kafka
        keeper = _parent(kafka["relay_pid"])  # the relay's keeper, the master's child
        assert keeper is not None and _parent(_parent(keeper)) == os.getpid(), (
            "the relay's keeper is not the master's child")
        assert "openalgo_events.relay" in Path(f"/proc/{kafka['relay_pid']}/cmdline").read_text()
        assert "--keep" in Path(f"/proc/{keeper}/cmdline").read_text().split("\0")
        # The master's root logger has no handler (the app configures logging in its workers):
        # the supervisor's line reaches gunicorn's error log all the same, once.
        started = f"openalgo-events: relay keeper started (pid {keeper})"
        server_log = tmp_path / f"server-{port}.log"
        assert server_log.read_text().count(started) == 1, server_log.read_text()[-3000:]
        metrics = requests.get(f"{prefix}/metrics", timeout=5)
        assert metrics.status_code == 200
        assert "openalgo_events_spool_depth 0.0" in metrics.text, metrics.text
        assert "openalgo_events_broker_reachable 1.0" in metrics.text, metrics.text
        refused = requests.post(f"{prefix}/mode", json={"mode": "SOCKETIO"}, timeout=5)
        assert refused.status_code == 401
        switched = requests.post(f"{prefix}/mode", json={"mode": "SOCKETIO"},
                                 headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert switched.status_code == 200, switched.text
        assert switched.json()["mode"] == "SOCKETIO"
        assert switched.json()["previous"]["mode"] == "KAFKA"
        requests.post(f"{url}/publish", params={"n": 3, "orderid": "S"}, timeout=10)
        wait_for(lambda: len(_order_ids(browser, "S-")) == 3, 30, message="own emits")
        assert requests.get(f"{prefix}/health", timeout=5).json()["mode"] == "SOCKETIO"
        assert sorted(_order_ids(browser, "K-")) == ["K-0", "K-1", "K-2"]  # each exactly once
        on_kafka = read_topic(kafka_bootstrap, topic, 6, timeout=5)
        assert len(on_kafka) == 3  # the three KAFKA-mode events; the SOCKETIO ones did not go
        assert sorted(_order_ids(browser, "S-")) == ["S-0", "S-1", "S-2"]
