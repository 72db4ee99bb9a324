"""Load for the order endpoint: sequential orders, then rounds of N concurrent orders.

    python -m bench.order_load PORT SEQUENTIAL CONCURRENCY ROUNDS OUT_FILE

Each round starts CONCURRENCY threads on a barrier so the orders arrive together (the design's
"100 concurrent orders"); the latency of each POST is recorded (ns). A warm-up round and a few
warm-up sequential orders come first and are not counted.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .common import write_json


def post_order(port: int, phase: str) -> int:
    body = json.dumps({"symbol": "SBIN-EQ", "exchange": "NSE", "action": "BUY", "quantity": "10",
                       "pricetype": "MARKET", "product": "MIS", "strategy": "bench",
                       "phase": phase})
    started = time.perf_counter_ns()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/api/v1/placeorder", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"order failed: HTTP {response.status}")
    return time.perf_counter_ns() - started


def concurrent_round(pool: ThreadPoolExecutor, port: int, n: int, phase: str) -> list[int]:
    barrier = threading.Barrier(n)

    def one(_: int) -> int:
        barrier.wait()
        return post_order(port, phase)

    return list(pool.map(one, range(n)))


def main(port: int, sequential: int, concurrency: int, rounds: int, out: str) -> None:
    for _ in range(10):
        post_order(port, "warm")
    seq_ns = [post_order(port, "seq") for _ in range(sequential)]
    load_ns: list[int] = []
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        concurrent_round(pool, port, concurrency, "warm")
        started = time.perf_counter()
        for _ in range(rounds):
            load_ns += concurrent_round(pool, port, concurrency, "load")
    write_json(out, {"sequential_ns": seq_ns, "load_ns": load_ns,
                     "load_seconds": time.perf_counter() - started})


if __name__ == "__main__":
    a = sys.argv[1:]
    main(int(a[0]), int(a[1]), int(a[2]), int(a[3]), a[4])
