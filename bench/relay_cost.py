"""What durable delivery costs the machine at a steady rate, and what a backlog costs the relay.

    python -m bench.relay_cost rate VARIANT BOOTSTRAP TOPIC RATE SECONDS WORKDIR OUT_FILE
    python -m bench.relay_cost backlog BOOTSTRAP TOPIC EVENTS WORKDIR OUT_FILE

``rate``: one publishing process sends order events at RATE per second (0: idle) for SECONDS,
after 20 warm-up events are confirmed and the relay has settled. The figure is CPU as a
percentage of one core over that window (user + system, every thread): for ``raw`` the process
itself (confluent-kafka ``produce`` + ``poll(0)``, the kafka family's raw loop); for
``oae_spool`` (exactly-once) and ``oae_spool_alo`` (at-least-once) the app process plus the
relay process and its keeper, read from /proc/<pid>/stat.

``backlog``: EVENTS order events are journaled with no relay running (a relay down while the
app went on), then a relay process is started and the spool drained; its peak RSS (VmHWM),
sampled every 50 ms, and the drain rate are the figures.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from .common import (
    order_data,
    paced,
    process_cpu,
    process_memory_kb,
    write_json,
)
from .kafka_bench import VARIANT_GUARANTEE, OpenAlgoEvents, Raw

SETTLE = 2.0  # seconds after the warm-up before measuring (the relay's start-up work is done)


def rate_run(variant: str, bootstrap: str, topic: str, rate: float, seconds: float,
             workdir: str, out: str) -> None:
    pub: Any = (Raw(bootstrap, topic, workdir) if variant == "raw" else
                OpenAlgoEvents(bootstrap, topic, workdir, spool=True,
                               guarantee=VARIANT_GUARANTEE[variant]))
    for i in range(20):
        pub.publish(order_data(i, "warm"))
    warm_ok = pub.confirm(30)
    helpers = pub.helpers() if isinstance(pub, OpenAlgoEvents) else []
    time.sleep(SETTLE)
    own_before, helpers_before = time.process_time(), sum(process_cpu(p) for p in helpers)
    started = time.monotonic()
    if rate > 0:
        paced(rate, int(rate * seconds), lambda i: pub.publish(order_data(i, "rate")))
    time.sleep(max(0.0, started + seconds - time.monotonic()))
    wall = time.monotonic() - started
    own = time.process_time() - own_before
    relay = sum(process_cpu(p) for p in helpers) - helpers_before
    ok = warm_ok and pub.confirm(30)
    pub.close()
    write_json(out, {"variant": variant, "rate": rate, "wall": wall, "confirmed": ok,
                     "app_cpu_pct": own / wall * 100, "relay_cpu_pct": relay / wall * 100,
                     "cpu_pct": (own + relay) / wall * 100})


def backlog_run(bootstrap: str, topic: str, events: int, workdir: str, out: str) -> None:
    os.environ["OPENALGO_EVENTS_RELAY_AUTOSTART"] = "FALSE"  # the relay is down meanwhile
    pub = OpenAlgoEvents(bootstrap, topic, workdir, spool=True)
    started = time.monotonic()
    for i in range(events):
        pub.publish(order_data(i, "backlog"))
    journaled = time.monotonic() - started
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_ORDER_EVENTS_TOPIC": topic,
           "KAFKA_SPOOL_PATH": pub.spool_path, "KAFKA_PRODUCER_COMPRESSION": "none",
           "KAFKA_PRODUCER_LINGER_MS": "10", "KAFKA_PRODUCER_BATCH_SIZE": "16384"}
    relay = subprocess.Popen([sys.executable, "-m", "openalgo_events.relay"], env=env,
                             stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = rss = 0
    started = time.monotonic()
    try:
        while pub.publisher.flush(0.05) and time.monotonic() - started < 600:
            memory = process_memory_kb(relay.pid)
            peak, rss = max(peak, memory["hwm_kb"]), memory["rss_kb"] or rss
        drained = time.monotonic() - started
        left = pub.publisher.flush(0)
        memory = process_memory_kb(relay.pid)
        peak = max(peak, memory["hwm_kb"])
        cpu = process_cpu(relay.pid)
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(60)
        pub.close()
    write_json(out, {"events": events, "journal_rate": events / journaled, "left": left,
                     "drain_seconds": drained, "drain_rate": events / drained,
                     "relay_peak_rss_mb": peak / 1024, "relay_rss_mb": rss / 1024,
                     "relay_cpu_us": cpu / events * 1e6})


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[0] == "rate":
        rate_run(a[1], a[2], a[3], float(a[4]), float(a[5]), a[6], a[7])
    else:
        backlog_run(a[1], a[2], int(a[3]), a[4], a[5])
