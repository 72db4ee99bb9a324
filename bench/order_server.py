"""An order endpoint, with order events on (KAFKA mode, durable spool), raw or off.

    python -m bench.order_server EVENTS PORT BOOTSTRAP TOPIC WORKDIR BROKER_DELAY_MS

EVENTS is on, on_alo, raw or off.

``POST /api/v1/placeorder`` validates the order as OpenAlgo's placeorder does (required keys,
a positive integer quantity), waits BROKER_DELAY_MS to stand for the broker's REST call,
assigns an order id and, with events on, calls ``publish_order_event`` with the send time in
the data (``on``: exactly-once, the default; ``on_alo``: at-least-once). ``raw`` sends the
same event with a plain confluent-kafka producer (no spool, no envelope checks): what the Kafka
client and the broker cost the endpoint by themselves. Served by Werkzeug's threaded server (a
thread per request).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sys
import time
from typing import Any

from flask import Flask, jsonify, request
from werkzeug.serving import make_server

REQUIRED = ("symbol", "exchange", "action", "quantity", "pricetype", "product")


class PlainProducer:
    """The same order_event, produced with confluent-kafka directly (produce + poll(0))."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self.producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                                  "enable.idempotence": True, "linger.ms": 10,
                                  "compression.type": "none"})
        self.producer.list_topics(topic, timeout=10)  # connected before the first order

    def publish_order_event(self, user_id: str, symbol: str, action: str, orderid: str,
                            mode: str, **data: Any) -> None:
        message = {"event_type": "order_event", "timestamp": time.time(), "user_id": user_id,
                   "source": "openalgo", "data": {"symbol": symbol, "action": action,
                                                  "orderid": orderid, "mode": mode, **data}}
        self.producer.produce(self.topic, json.dumps(message).encode(), user_id.encode())
        self.producer.poll(0)


def create_app(publisher: Any, broker_delay: float) -> Flask:
    app = Flask(__name__)
    ids = itertools.count(1)

    @app.post("/api/v1/placeorder")
    def placeorder() -> Any:
        order = request.get_json(silent=True) or {}
        missing = [k for k in REQUIRED if k not in order]
        if missing or not str(order.get("quantity", "")).isdigit():
            return jsonify(status="error", message=f"missing or bad: {missing}"), 400
        if broker_delay:
            time.sleep(broker_delay)
        orderid = f"{next(ids):012d}"
        if publisher is not None:
            publisher.publish_order_event(
                order.get("user", "bench-user"), order["symbol"], order["action"], orderid,
                "live", exchange=order["exchange"], quantity=int(order["quantity"]),
                price_type=order["pricetype"], product_type=order["product"],
                phase=order.get("phase", "load"), sent_ns=time.time_ns())
        return jsonify(status="success", orderid=orderid)

    return app


def main(events: str, port: int, bootstrap: str, topic: str, workdir: str,
         broker_delay_ms: float) -> None:
    publisher = None
    if events in ("on", "on_alo"):
        from openalgo_events.config import Settings
        from openalgo_events.publisher import KafkaEventPublisher

        settings = Settings.from_env({
            "ORDER_EVENT_MODE": "KAFKA", "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_SPOOL_PATH": os.path.join(workdir, "spool"),
            "KAFKA_PRODUCER_LINGER_MS": "10", "KAFKA_PRODUCER_COMPRESSION": "none",
            "KAFKA_DELIVERY_GUARANTEE": "at_least_once" if events == "on_alo" else "exactly_once",
        })
        publisher = KafkaEventPublisher(bootstrap, topic, settings=settings)
    elif events == "raw":
        publisher = PlainProducer(bootstrap, topic)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = make_server("127.0.0.1", port, create_app(publisher, broker_delay_ms / 1000),
                         threaded=True)
    server.serve_forever()


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], int(a[1]), a[2], a[3], a[4], float(a[5]))
