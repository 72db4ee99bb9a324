"""CPU per event on each side of the process boundary: the host (publish) and the relay.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python -m bench.relay_cpu [EVENTS]

Starts a relay process on a fresh spool (publishers' auto-start off), publishes EVENTS order
events (default 40,000) in a tight loop from this process, waits until the relay confirms them
all (``flush``), and prints: the publishing thread's CPU per event, the publish rate, the
confirmed rate, and the relay process's CPU per event (its /proc counters: every thread,
librdkafka's included). It also times one doorbell ring alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

from bench.common import create_topic


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(events: int) -> None:
    os.environ["OPENALGO_EVENTS_RELAY_AUTOSTART"] = "FALSE"
    from openalgo_events import KafkaEventPublisher, Settings
    from openalgo_events.spool.directory import Bell, SpoolDirectory

    bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    topic = f"bench-relay-{os.getpid()}"
    create_topic(bootstrap, topic)  # clusters usually do not create topics on first use
    spool = os.path.join(tempfile.mkdtemp(prefix="openalgo-relay-bench-"), "spool")
    env = {**os.environ, "KAFKA_ORDER_EVENTS_TOPIC": topic, "KAFKA_SPOOL_PATH": spool,
           "KAFKA_PRODUCER_COMPRESSION": "none"}
    relay = subprocess.Popen([sys.executable, "-m", "openalgo_events.relay"], env=env,
                             stderr=subprocess.DEVNULL)
    settings = Settings.from_env({"KAFKA_SPOOL_PATH": spool, "KAFKA_PRODUCER_COMPRESSION": "none"})
    publisher = KafkaEventPublisher(bootstrap, topic, settings=settings)
    try:
        publisher.publish_order_event("alice", "SBIN-EQ", "BUY", "warm", "live")
        assert publisher.flush(30) == 0, "the relay did not confirm the first event"
        relay_before, started = _cpu(relay.pid), time.perf_counter()
        caller_before = time.thread_time()
        for i in range(events):
            publisher.publish_order_event("alice", "SBIN-EQ", "BUY", str(i), "live")
        caller = time.thread_time() - caller_before
        published = time.perf_counter() - started
        left = publisher.flush(120)
        confirmed = time.perf_counter() - started
        relay_cpu = _cpu(relay.pid) - relay_before
        bell = Bell(SpoolDirectory(spool, create=False))
        ring_before = time.thread_time()
        for _ in range(events):
            bell.ring(b"bench")
        ring = time.thread_time() - ring_before
        bell.close()
        print(f"host CPU per publish {caller / events * 1e6:.1f} us; publish rate "
              f"{events / published:,.0f}/s; confirmed {events / confirmed:,.0f}/s "
              f"({left} left); relay CPU per event {relay_cpu / events * 1e6:.1f} us; "
              f"one doorbell ring {ring / events * 1e6:.2f} us")
    finally:
        publisher.close()
        relay.send_signal(signal.SIGTERM)
        relay.wait(60)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40_000)
