"""Helpers shared by every benchmark process: timing loops, percentiles, process counters.

Each measuring process is started fresh (``python -m bench.<module>``) and hands its numbers
back as one JSON file, so no variant inherits another's imports, threads or memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
USER = "bench-user"


def order_data(seq: int, phase: str) -> dict[str, Any]:
    """A realistic order_event payload, carrying its send time (wall clock, ns) for end-to-end."""
    return {"symbol": "SBIN-EQ", "action": "BUY", "orderid": f"ORD{seq:08d}", "mode": "live",
            "exchange": "NSE", "quantity": 10, "price": 812.35, "price_type": "MARKET",
            "product_type": "MIS", "seq": seq, "phase": phase, "sent_ns": time.time_ns()}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered) + 0.4999))
    return float(ordered[min(rank, len(ordered)) - 1])


def summary_us(ns_values: Sequence[int]) -> dict[str, float]:
    """p50/p95/p99/max of nanosecond samples, in microseconds."""
    us = [v / 1000 for v in ns_values]
    return {"p50": percentile(us, 50), "p95": percentile(us, 95), "p99": percentile(us, 99),
            "max": max(us) if us else float("nan"), "n": len(us)}


def paced(rate: float, count: int, call: Callable[[int], None]) -> list[int]:
    """Call ``call(i)`` ``count`` times on a deadline schedule of ``rate`` per second.

    Returns the caller time of each call (ns). A late call is not followed by a burst: the
    schedule only catches up by skipping the sleep.
    """
    interval = 1.0 / rate
    timings = []
    start = time.perf_counter()
    for i in range(count):
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        t0 = time.perf_counter_ns()
        call(i)
        timings.append(time.perf_counter_ns() - t0)
    return timings


def tight(count: int, call: Callable[[int], None]) -> list[int]:
    """Call ``call(i)`` as fast as possible; caller time of each call (ns)."""
    timings = []
    clock = time.perf_counter_ns
    for i in range(count):
        t0 = clock()
        call(i)
        timings.append(clock() - t0)
    return timings


def memory_kb() -> dict[str, int]:
    """VmRSS and VmHWM (peak) of this process, in kB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0])
    return {"rss_kb": out.get("VmRSS", 0), "hwm_kb": out.get("VmHWM", 0)}


def io_counters() -> dict[str, int]:
    """/proc/self/io: wchar (bytes passed to write calls) and write_bytes (sent to storage)."""
    counters = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        key, value = line.split(":", 1)
        counters[key] = int(value)
    return {"wchar": counters.get("wchar", 0), "write_bytes": counters.get("write_bytes", 0)}


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread) a process has used: /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_io(pid: int) -> dict[str, int]:
    """/proc/<pid>/io of another process (same counters as ``io_counters``)."""
    counters = {}
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            key, value = line.split(":", 1)
            counters[key] = int(value)
    except OSError:
        pass
    return {"wchar": counters.get("wchar", 0), "write_bytes": counters.get("write_bytes", 0)}


def process_memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of another process, in kB (zeros once it is gone)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return {"rss_kb": out.get("VmRSS", 0), "hwm_kb": out.get("VmHWM", 0)}


def relay_pids(spool_path: str | Path, timeout: float = 10.0) -> tuple[int, int | None]:
    """The pids of the relay serving a spool directory and of its keeper (read from their locks
    in the spool), waiting up to ``timeout`` seconds for a relay to hold it."""
    from openalgo_events.spool import Spool

    deadline = time.monotonic() + timeout
    while True:
        with Spool(str(spool_path)) as spool:
            relay, keeper = spool.relay_pid(), spool.keeper_pid()
        if relay is not None:
            return relay, keeper
        if time.monotonic() > deadline:
            raise RuntimeError(f"no relay holds {spool_path} after {timeout}s")
        time.sleep(0.05)


def disk_bytes(path: str | Path) -> int:
    """Bytes a directory tree occupies on disk (allocated blocks, so preallocation counts)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def write_json(path: str | Path, doc: Any) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def wait_file(path: str | Path, timeout: float,
              proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``path`` exists; fail early if ``proc`` died first."""
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before {path}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout}s")
        time.sleep(0.02)


def spawn(module: str, *args: str, python: str | None = None) -> subprocess.Popen[bytes]:
    """Start ``python -m bench.<module> args...`` from the repository root."""
    path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    return subprocess.Popen([python or sys.executable, "-m", f"bench.{module}", *args],
                            cwd=ROOT, env=env, stdin=subprocess.DEVNULL)


def finish(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Wait for a child; kill it (by its own id) if it overstays."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        raise


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def create_topic(bootstrap: str, name: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, num_partitions=1,
                                                replication_factor=1)]).values():
        future.result(10)
