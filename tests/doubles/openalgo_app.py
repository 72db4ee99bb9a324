"""A small OpenAlgo look-alike: a Flask-SocketIO app with an in-process bus whose subscriber
emits toasts the way OpenAlgo's does. Served by gunicorn (eventlet) or run directly.

    gunicorn -c python:openalgo_events.integrations.gunicorn --worker-class eventlet -w 1 \\
        tests.doubles.openalgo_app:app
    LOOKALIKE_ASYNC_MODE=threading python -m tests.doubles.openalgo_app PORT
"""

from __future__ import annotations

import os
import sys
from typing import Any

from flask import Flask, jsonify, request
from flask_socketio import SocketIO

from openalgo_events.integrations import installation
from tests.doubles.event_bus import EventBus
from tests.doubles.events import TOPIC_FIELDS, synthetic

if os.environ.get("LOOKALIKE_OPENALGO_LOGGING"):
    from tests.doubles import openalgo_logging

    openalgo_logging.install()

app = Flask(__name__)
socketio = SocketIO(app, async_mode=os.environ.get("LOOKALIKE_ASYNC_MODE", "eventlet"),
                    cors_allowed_origins="*")
bus = EventBus()


def _toast(event: Any) -> None:
    """What OpenAlgo's own subscriber does for two topics: a broadcast toast."""
    if event.mode == "analyze" and event.topic != "order.update":
        socketio.emit("analyzer_update", {"request": event.request_data,
                                          "response": event.response_data})
    elif event.topic == "order.placed":
        socketio.emit("order_event", {"symbol": event.symbol, "action": event.action,
                                      "orderid": event.orderid, "exchange": event.exchange,
                                      "price_type": event.pricetype,
                                      "product_type": event.product, "mode": event.mode})


for _topic in TOPIC_FIELDS:
    bus.subscribe(_topic, _toast, name="socketio")


@app.route("/ping")
def ping() -> str:
    return "pong"


@app.route("/publish", methods=["POST"])
def publish() -> Any:
    count = int(request.args.get("n", "1"))
    topic = request.args.get("topic", "order.placed")
    prefix = request.args.get("orderid", "O")
    for i in range(count):
        bus.publish(synthetic(topic, request.args.get("mode", "live"),
                              orderid=f"{prefix}-{i}"))
    return jsonify(published=count)


# A publisher built at import (an app that does so, or gunicorn --preload): under --preload it
# is built, and publishes once, in the master, before the workers are forked.
IMPORT_PUBLISHER = None
if os.environ.get("LOOKALIKE_PUBLISHER_AT_IMPORT"):
    from openalgo_events import KafkaEventPublisher, Settings

    IMPORT_PUBLISHER = KafkaEventPublisher(os.environ["KAFKA_BOOTSTRAP_SERVERS"],
                                           os.environ["KAFKA_ORDER_EVENTS_TOPIC"],
                                           settings=Settings.from_env())
    IMPORT_EVENT = IMPORT_PUBLISHER.publish_order_event("alice", "SBIN-EQ", "BUY", "import",
                                                        "live").event_id


@app.route("/publish_import", methods=["POST"])
def publish_import() -> Any:
    """Publish through the publisher built at import; answers with the journal it used."""
    if IMPORT_PUBLISHER is None:
        return jsonify(error="no publisher at import"), 404
    envelope = IMPORT_PUBLISHER.publish_order_event("bob", "SBIN-EQ", "BUY",
                                                    request.args.get("orderid", "I"), "live")
    return jsonify(event_id=envelope.event_id, pid=os.getpid(), import_event=IMPORT_EVENT,
                   writer=IMPORT_PUBLISHER.transport._journal.name)  # type: ignore[attr-defined]


@app.route("/publish_direct", methods=["POST"])
def publish_direct() -> Any:
    """Publish through the installed publisher on the request's thread: the answer carries the
    event id only once ``publish`` returned (the event is journaled)."""
    current = installation.current
    if current is None:
        return jsonify(error="not installed"), 503
    envelope = current.publisher.publish_order_event(
        request.args.get("user", "alice"), "SBIN-EQ", "BUY", request.args.get("orderid", "O"),
        "live")
    return jsonify(event_id=envelope.event_id, pid=os.getpid())


@app.route("/emit", methods=["POST"])
def emit() -> Any:
    socketio.emit(request.args.get("event", "master_contract_download"),
                  {"status": "success", "message": request.args.get("message", "done")})
    return jsonify(emitted=True)


if os.environ.get("LOOKALIKE_TRACEMALLOC"):
    import tracemalloc

    tracemalloc.start(int(os.environ["LOOKALIKE_TRACEMALLOC"]))


@app.route("/memory")
def memory() -> Any:
    """This worker's pid and resident memory (kB), from /proc; with ``LOOKALIKE_TRACEMALLOC``
    (frames to keep) also the memory still held, in kB, by the package's code (allocations
    whose traceback passes through ``openalgo_events``) and in all."""
    with open("/proc/self/status") as proc:
        status = dict(line.split(":", 1) for line in proc if ":" in line)
    body: dict[str, Any] = {"pid": os.getpid(), "rss_kb": int(status["VmRSS"].split()[0])}
    if os.environ.get("LOOKALIKE_TRACEMALLOC"):
        import gc
        import tracemalloc

        gc.collect()
        snapshot = tracemalloc.take_snapshot()
        ours = snapshot.filter_traces([tracemalloc.Filter(True, "*/openalgo_events/*",
                                                          all_frames=True)])
        body["traced_kb"] = sum(s.size for s in snapshot.statistics("filename")) // 1024
        body["package_kb"] = sum(s.size for s in ours.statistics("filename")) // 1024
        body["package_top"] = [str(s) for s in ours.statistics("lineno")[:10]]
    return jsonify(body)


@app.route("/health")
def health() -> Any:
    current = installation.current
    return jsonify({**(current.health() if current else {"installed": False}),
                    "bus": bus.stats()})


def main(port: int) -> None:
    installation.install()
    socketio.run(app, host="127.0.0.1", port=port, allow_unsafe_werkzeug=True)


if __name__ == "__main__":  # run the importable module, so the installer finds this bus
    from tests.doubles import openalgo_app

    openalgo_app.main(int(sys.argv[1]))
