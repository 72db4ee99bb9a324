"""An eventlet-patched Flask-SocketIO app running the inbound consumer, for the eventlet test.

Usage: python inbound_eventlet_app.py BOOTSTRAP TOPIC STATE_PATH PORT
Prints the worst delay of a 10 ms green sleep, measured while the consumer runs, on SIGTERM.
"""

import eventlet

eventlet.monkey_patch()

import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from flask import Flask  # noqa: E402
from flask_socketio import SocketIO  # noqa: E402

from openalgo_events import Settings  # noqa: E402
from openalgo_events.inbound import EsbConsumer  # noqa: E402


def main(bootstrap: str, topic: str, state: str, port: str) -> None:
    app = Flask(__name__)
    socketio = SocketIO(app, async_mode="eventlet")
    settings = Settings.from_env({
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_ESB_EVENTS_TOPIC": topic,
        "KAFKA_CONSUMER_GROUP": f"{topic}-group", "KAFKA_CONSUMER_AUTO_OFFSET_RESET": "earliest",
        "KAFKA_CONSUMER_STATE_PATH": state})
    consumer = EsbConsumer(settings, socketio=socketio).start()
    worst = [0.0]

    def ticker() -> None:
        while True:
            started = time.monotonic()
            eventlet.sleep(0.01)
            worst[0] = max(worst[0], time.monotonic() - started)

    def on_term(*_: object) -> None:
        consumer.stop()
        print(f"worst_tick={worst[0]:.4f}", flush=True)
        os._exit(0)  # SystemExit raised in a signal handler can be swallowed by eventlet's hub

    signal.signal(signal.SIGTERM, on_term)
    eventlet.spawn(ticker)
    socketio.run(app, host="127.0.0.1", port=int(port))


if __name__ == "__main__":
    main(*sys.argv[1:])
