"""OpenAlgo's eventlet worker, closer still: its logging, and Socket.IO publishes from green
threads and from real OS threads. Served by gunicorn's eventlet worker through the hook:

    gunicorn -c python:openalgo_events.integrations.gunicorn --worker-class eventlet -w 1 \\
        tests.doubles.eventlet_host_app:app

Like OpenAlgo (OPENALGO.md section 8), it replaces the root logger's handlers at import, after
the worker monkey-patched ``threading`` (so their locks are green), and gives each a filter
that redacts the message and turns every ``record.args`` item into its ``str()``. The filter
also counts records that reach a handler on an OS thread other than the hub's (``foreign``).
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import eventlet
from eventlet import patcher
from flask import jsonify, request

from openalgo_events import SocketIOEventPublisher
from tests.doubles.openalgo_app import app, bus, socketio

__all__ = ["app", "bus", "socketio"]

_real_thread = patcher.original("_thread")
_real_threading = patcher.original("threading")
MAIN = _real_threading.main_thread().ident
FOREIGN: list[str] = []  # loggers of records a host handler saw on a foreign OS thread
REDACT = re.compile(r"(apikey|api_key|token|password)(\s*[=:]\s*)\S+", re.IGNORECASE)


class RedactionFilter(logging.Filter):
    """What OpenAlgo's filter does to every record, plus the foreign-thread count."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _real_thread.get_ident() != MAIN:
            FOREIGN.append(record.name)
        record.msg = REDACT.sub(r"\1\2[REDACTED]", str(record.msg))
        if isinstance(record.args, tuple):
            record.args = tuple(str(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: str(value) for key, value in record.args.items()}
        return True


def _openalgo_logging() -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter = logging.Formatter("[%(asctime)s] %(levelname)s in %(name)s: %(message)s")
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler("openalgo.log")):
        handler.addFilter(RedactionFilter())
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(logging.INFO)


_openalgo_logging()
# Made at import, on the worker's main thread, before any request: its first publish may come
# from a real OS thread.
publisher = SocketIOEventPublisher(socketio)
_seq_lock = _real_threading.Lock()
_seq = [0]
_log = logging.getLogger("openalgo_events.lookalike")  # ours: its records go through the hub


def _publish_one(tag: str, source: str) -> None:
    with _seq_lock:  # the sequence number is the order of the publish calls
        seq = _seq[0]
        _seq[0] += 1
        publisher.publish("order_notification", "alice", symbol="SBIN-EQ", status="info",
                          message=f"{tag}:{seq}:{source}")


def _os_thread(tag: str, count: int) -> Any:
    def run() -> None:
        for _ in range(count):
            _publish_one(tag, "os")
        # A secret in an argument: formatted on this thread, then redacted by the host's filter.
        _log.info("published %s events from a real OS thread, apikey=%s", count, "secret123")

    thread = _real_threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _join(thread: Any) -> None:
    while thread.is_alive():
        eventlet.sleep(0.002)


@app.route("/sio/publish", methods=["POST"])
def sio_publish() -> Any:
    """Publish ``n`` events from a real OS thread and ``n`` from this green thread, in
    ``order``: os-first, green-first or interleaved."""
    count = int(request.args.get("n", "50"))
    order = request.args.get("order", "os-first")
    tag = request.args.get("tag", order)
    if order == "green-first":
        for _ in range(count):
            _publish_one(tag, "green")
        _join(_os_thread(tag, count))
    elif order == "interleaved":
        thread = _os_thread(tag, count)
        for _ in range(count):
            _publish_one(tag, "green")
            eventlet.sleep(0)
        _join(thread)
    else:
        _join(_os_thread(tag, count))
        for _ in range(count):
            _publish_one(tag, "green")
    return jsonify(published=2 * count)


@app.route("/lookalike")
def lookalike() -> Any:
    return jsonify(foreign=list(FOREIGN), next_seq=_seq[0])

