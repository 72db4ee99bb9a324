"""A Flask-SocketIO server (threading mode, as OpenAlgo configures it) for the recovery bench.

    python -m bench.recovery_server PORT MODE VARIANT [TOPIC]

MODE ``socketio``: ``SocketIOEventPublisher`` emits (VARIANT ``off``: recovery off, ``on``:
recovery on, ``raw``: plain ``socketio.emit``). MODE ``kafka``: a ``KafkaSocketIOBridge`` with
recovery on re-emits TOPIC (on ``$KAFKA_BOOTSTRAP_SERVERS``) and a KAFKA-mode publisher (its
relay in this process) writes to it.

``POST /bench/publish {"count": N, "tag": T, "rate": R}``: N order events (R per second, or a
tight loop when R is 0), then waits until they are emitted; answers the caller time of each
publish (ns), the time until the last one was emitted (ns) and the process's CPU time over
that span (ns, every thread).
``GET /bench/emitted``: events emitted so far.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from flask import Flask, jsonify, request
from flask_socketio import SocketIO

from openalgo_events import Settings, build_publisher
from openalgo_events.publisher import SocketIOEventPublisher
from openalgo_events.recovery import RecoveryOptions

from .common import USER, order_data, paced, tight


def create(mode: str, variant: str, topic: str = "") -> tuple[Flask, SocketIO]:
    app = Flask(__name__)
    socketio = SocketIO(app, async_mode="threading", cors_allowed_origins="*")
    emitted = [0]
    if mode == "kafka":
        from openalgo_events.integrations.bridge import KafkaSocketIOBridge

        settings = Settings.from_env({
            "KAFKA_BOOTSTRAP_SERVERS": os.environ["KAFKA_BOOTSTRAP_SERVERS"],
            "KAFKA_ORDER_EVENTS_TOPIC": topic, "ORDER_EVENT_MODE": "KAFKA",
            "KAFKA_SPOOL_PATH": ":memory:", "ORDER_EVENT_SOCKETIO_RECOVERY": "TRUE"})
        bridge = KafkaSocketIOBridge(settings, socketio).start()
        bridge.ready.wait(30)
        publisher = build_publisher(settings)

        def count() -> int:
            return bridge.emitted
    else:
        recovery = RecoveryOptions() if variant == "on" else None
        publisher = SocketIOEventPublisher(socketio, recovery=recovery)

        transport: Any = publisher.transport

        def count() -> int:  # the transport's own counter: cheap to poll
            return emitted[0] if variant == "raw" else int(transport._emitted)

    def publish(data: dict[str, Any]) -> None:
        if variant == "raw":
            socketio.emit("order_event", data)
            emitted[0] += 1
        else:
            publisher.publish_order_event(USER, data.pop("symbol"), data.pop("action"),
                                          data.pop("orderid"), data.pop("mode"), **data)

    @app.post("/bench/publish")
    def publish_route() -> Any:
        body = request.get_json()
        n, rate, tag = body["count"], body.get("rate", 0), body.get("tag", "")
        target = count() + n
        started, cpu = time.perf_counter_ns(), time.process_time_ns()
        if rate:
            caller = paced(rate, n, lambda i: publish(order_data(i, tag)))
        else:
            payloads = [order_data(i, tag) for i in range(n)]
            caller = tight(n, lambda i: publish(payloads[i]))
        deadline = time.monotonic() + 120
        while count() < target and time.monotonic() < deadline:
            time.sleep(0.001)
        return jsonify(caller_ns=caller, until_emitted_ns=time.perf_counter_ns() - started,
                       cpu_ns=time.process_time_ns() - cpu, emitted=count())

    @app.get("/bench/emitted")
    def emitted_route() -> Any:
        return jsonify(emitted=count())

    return app, socketio


if __name__ == "__main__":
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    flask_app, sio = create(*sys.argv[2:5])
    sio.run(flask_app, host="127.0.0.1", port=int(sys.argv[1]), allow_unsafe_werkzeug=True,
            log_output=False)
