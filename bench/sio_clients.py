"""N python-socketio clients (asyncio, one process) that record when each event arrives.

    python -m bench.sio_clients URL N TRANSPORT READY_FILE OUT_FILE TIMEOUT

Connects N ``socketio.AsyncClient``s over TRANSPORT (websocket or polling), writes READY_FILE,
then records ``(phase, seq, receive - sent_ns)`` for every ``order_event`` until ``bench_done``
reached every client, and writes them to OUT_FILE.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import Any

import socketio

from .common import write_json

CONNECT_BATCH = 25


async def run(url: str, n: int, transport: str, ready: str, out: str, timeout: float) -> None:
    records: list[list[tuple[str, int, int]]] = [[] for _ in range(n)]
    finished = asyncio.Event()
    done_count = 0

    def client(index: int) -> socketio.AsyncClient:
        sio = socketio.AsyncClient(reconnection=False)

        @sio.on("order_event")
        def on_order(data: dict[str, Any]) -> None:
            records[index].append((data["phase"], data["seq"], time.time_ns() - data["sent_ns"]))

        @sio.on("bench_done")
        def on_done(_data: Any) -> None:
            nonlocal done_count
            done_count += 1
            if done_count == n:
                finished.set()

        return sio

    clients = [client(i) for i in range(n)]
    for start in range(0, n, CONNECT_BATCH):
        await asyncio.gather(*(c.connect(url, transports=[transport], wait_timeout=30)
                               for c in clients[start:start + CONNECT_BATCH]))
    write_json(ready, {"connected": n})
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(finished.wait(), timeout)
    write_json(out, {"records": records, "done": done_count})
    await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    asyncio.run(run(a[0], int(a[1]), a[2], a[3], a[4], float(a[5])))
