"""A Flask-SocketIO server (threading mode, as OpenAlgo configures it) driven over HTTP.

    python -m bench.sio_server PORT

``POST /bench/publish {"variant": "raw"|"oae", "count": N, "rate": R, "tag": T}`` emits N
``order_event``s at R per second, either with ``socketio.emit`` or through
``SocketIOEventPublisher.publish_order_event``, and answers the caller time of each call (ns).
``POST /bench/done`` emits ``bench_done`` so the clients write their results.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from flask import Flask, jsonify, request
from flask_socketio import SocketIO

from openalgo_events.publisher import SocketIOEventPublisher

from .common import USER, order_data, paced


def create() -> tuple[Flask, SocketIO]:
    app = Flask(__name__)
    socketio = SocketIO(app, async_mode="threading", cors_allowed_origins="*")
    publisher = SocketIOEventPublisher(socketio)

    def emit_raw(data: dict[str, Any]) -> None:
        socketio.emit("order_event", data)

    def emit_ours(data: dict[str, Any]) -> None:
        publisher.publish_order_event(USER, data.pop("symbol"), data.pop("action"),
                                      data.pop("orderid"), data.pop("mode"), **data)

    @app.post("/bench/publish")
    def publish() -> Any:
        body = request.get_json()
        call = emit_raw if body["variant"] == "raw" else emit_ours
        timings = paced(body["rate"], body["count"],
                        lambda i: call(order_data(i, body["tag"])))
        left = publisher.flush(30)
        return jsonify(caller_ns=timings, undelivered=left)

    @app.post("/bench/done")
    def done() -> Any:
        socketio.emit("bench_done", {})
        return jsonify(ok=True)

    return app, socketio


if __name__ == "__main__":
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    flask_app, sio = create()
    sio.run(flask_app, host="127.0.0.1", port=int(sys.argv[1]), allow_unsafe_werkzeug=True,
            log_output=False)
