"""The Kafka -> Socket.IO bridge across two app processes: a browser-side client connected
to one sees, once, the events published by the other."""

from __future__ import annotations

from collections import defaultdict
from contextlib import ExitStack

import pytest
import requests
import socketio

from tests.integration.openalgo_procs import serve, threading_app
from tests.support import create_topic, wait_for

pytestmark = pytest.mark.broker
WATCHED = ("order_event", "master_contract_download", "analyzer_update")


def _client(url: str, transport: str) -> tuple[socketio.Client, dict[str, list[dict]]]:
    received: dict[str, list[dict]] = defaultdict(list)
    client = socketio.Client(reconnection=False)
    for name in WATCHED:
        client.on(name, lambda data, name=name: received[name].append(data))
    client.connect(url, transports=[transport], wait_timeout=10)
    return client, received


def _orderids(received: dict[str, list[dict]]) -> list[str]:
    return [d["orderid"] for d in received["order_event"]]


def test_events_published_by_one_process_reach_browsers_of_the_other(kafka_bootstrap, topic,
                                                                       tmp_path):
    """Bus events and mirrored emits published by process 2 reach Socket.IO clients of
    process 1 (websocket and polling), and process 2's own client sees each exactly once."""
    create_topic(kafka_bootstrap, topic, 2)
    env = {"ORDER_EVENT_MODE": "KAFKA", "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "KAFKA_ORDER_EVENTS_TOPIC": topic}
    with ExitStack() as stack:
        urls = []
        for name in ("one", "two"):
            run_dir = tmp_path / name
            run_dir.mkdir()
            command, full_env, port = threading_app(run_dir, **env)
            urls.append(stack.enter_context(serve(command, full_env, run_dir, port)))
        one, two = urls
        for url in urls:
            wait_for(lambda url=url: requests.get(f"{url}/health", timeout=5).json()[
                "bridge"]["healthy"], 30, message=f"bridge of {url} ready")
        clients = [_client(one, "websocket"), _client(one, "polling"), _client(two, "polling")]
        for client, _ in clients:
            stack.callback(client.disconnect)
        ws_one, poll_one, own = (received for _, received in clients)

        requests.post(f"{two}/publish?n=1&orderid=X", timeout=5).raise_for_status()
        requests.post(f"{two}/emit?event=master_contract_download&message=M",
                      timeout=5).raise_for_status()
        for received in (ws_one, poll_one):
            try:
                wait_for(lambda r=received: "X-0" in _orderids(r), 20, message="order_event")
            except AssertionError:
                raise AssertionError([requests.get(f"{u}/health", timeout=5).json()
                                      for u in urls]) from None
            wait_for(lambda r=received: r["master_contract_download"], 20,
                     message="master_contract_download")
        event = ws_one["order_event"][0]
        assert event["symbol"] == "symbol-1" and event["price_type"] == "pricetype-1"
        assert event["bus_topic"] == "order.placed" and "api_key" not in event
        assert ws_one["master_contract_download"] == [{"status": "success", "message": "M"}]

        # A later event of the same user follows on the same partition: once it is in, any
        # duplicate of the first would have arrived before it.
        requests.post(f"{two}/publish?n=1&orderid=MARK", timeout=5).raise_for_status()
        wait_for(lambda: "MARK-0" in _orderids(own), 20, message="marker")
        assert _orderids(own) == ["X-0", "MARK-0"]
        assert len(own["master_contract_download"]) == 1
