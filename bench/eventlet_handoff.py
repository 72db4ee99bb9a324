"""Socket.IO publishes under eventlet: the cost of ``publish`` from a green thread and from a
real OS thread, and how long one event takes from a real thread's publish to its emit.

    python -m bench.eventlet_handoff   (no clients connected: emit cost only)
"""

import eventlet

eventlet.monkey_patch()

import time  # noqa: E402
from typing import Any  # noqa: E402

from eventlet import patcher  # noqa: E402
from flask import Flask  # noqa: E402
from flask_socketio import SocketIO  # noqa: E402

from openalgo_events import SocketIOEventPublisher  # noqa: E402

N = 20_000
real_threading = patcher.original("threading")


def _per_event_us(transport: Any, envelope: Any, out: list[float]) -> None:
    started = time.perf_counter()
    for _ in range(N):
        transport.publish(envelope)
    out.append((time.perf_counter() - started) / N * 1e6)


def _join(thread: Any) -> None:
    while thread.is_alive():
        eventlet.sleep(0.001)


def main() -> None:
    publisher = SocketIOEventPublisher(SocketIO(Flask(__name__), async_mode="eventlet"))
    envelope = publisher.publish("order_notification", "alice", symbol="S", status="info",
                                 message="warm-up")
    publisher.flush(5)
    transport: Any = publisher.transport
    green: list[float] = []
    _per_event_us(transport, envelope, green)
    started = time.perf_counter()
    transport.flush(30)
    green_drain = time.perf_counter() - started
    real: list[float] = []
    thread = real_threading.Thread(target=_per_event_us, args=(transport, envelope, real))
    thread.start()
    _join(thread)
    latencies = []
    for _ in range(200):
        before = transport.health()["emitted"]
        started = time.perf_counter()
        one = real_threading.Thread(target=transport.publish, args=(envelope,))
        one.start()
        while transport.health()["emitted"] == before:
            eventlet.sleep(0)
        latencies.append((time.perf_counter() - started) * 1e3)
        _join(one)
    latencies.sort()
    print(f"publish from a green thread: {green[0]:.2f} us/event ({N} emitted in "
          f"{green_drain * 1e3:.0f} ms after); from a real OS thread: {real[0]:.2f} us/event")
    print(f"real-thread publish to emit (thread start included): p50 {latencies[100]:.3f} ms, "
          f"p99 {latencies[197]:.3f} ms")


if __name__ == "__main__":
    main()
