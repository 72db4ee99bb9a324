"""The benchmark driver: one command, every variant, the same broker, interleaved repeats.

    bench/run [--quick] [--repeats N] [--only kafka,relay,socketio,orders]

Starts a dev broker (Tansu) unless KAFKA_BOOTSTRAP_SERVERS is set, runs each measuring process
fresh, repeats the variants in turn (A B C, A B C, ...) and writes
bench/results/<date>.{json,md,png} plus latest.md / latest.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from importlib import metadata
from pathlib import Path
from typing import Any

from .common import (
    ROOT,
    create_topic,
    finish,
    percentile,
    read_json,
    spawn,
    stop,
    wait_file,
)
from .kafka_bench import VARIANTS as KAFKA_VARIANTS

FAMILIES = ("kafka", "relay", "socketio", "orders")
RESULTS = ROOT / "bench" / "results"


@dataclass
class Plan:
    """Sizes of one run: --quick keeps each figure but shortens it."""

    repeats: int
    paced_count: int  # events at 100/s (caller time and end-to-end)
    max_count: int  # events in the tight loop (max rate, throughput)
    sio_paced: int  # Socket.IO events at 100/s with one client
    fanout_events: int  # events per fan-out measurement, at 10/s
    fanout_sizes: tuple[int, ...]
    order_sequential: int
    order_rounds: int  # rounds of 100 concurrent orders
    broker_delays_ms: tuple[float, ...]  # simulated broker REST call in the order endpoint
    rate_seconds: float  # seconds each steady-rate CPU measurement lasts
    backlog_events: int  # events journaled while no relay runs, then drained

    @classmethod
    def make(cls, quick: bool, repeats: int | None) -> Plan:
        if quick:
            return cls(repeats or 1, 200, 4000, 100, 10, (1, 50, 500), 50, 2, (0.0, 20.0),
                       5.0, 20_000)
        return cls(repeats or 3, 500, 20000, 300, 30, (1, 50, 500), 200, 5, (0.0, 20.0),
                   15.0, 300_000)


@dataclass
class Results:
    """figure -> variant -> one value per repeat."""

    runs: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    notes: list[str] = field(default_factory=list)

    def add(self, figure: str, variant: str, value: float) -> None:
        self.runs[figure][variant].append(float(value))

    def summary(self) -> dict[str, dict[str, dict[str, Any]]]:
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for figure, by_variant in self.runs.items():
            out[figure] = {}
            for variant, values in by_variant.items():
                out[figure][variant] = {"median": statistics.median(values),
                                        "min": min(values), "max": max(values), "runs": values}
        return out


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def reference_python() -> str | None:
    """kafka-python 2.0.2 imports on 3.11 but not 3.12 (its vendored six): pick a 3.11."""
    if sys.version_info < (3, 12):
        return sys.executable
    return os.environ.get("BENCH_REFERENCE_PYTHON")


def topic_name(kind: str) -> str:
    return f"bench-{kind}-{uuid.uuid4().hex[:10]}"


def latency_ms(values_ns: list[int], q: float) -> float:
    return percentile(values_ns, q) / 1e6


# -- Kafka publishers ------------------------------------------------------------------------
def kafka_family(plan: Plan, bootstrap: str, tmp: Path, results: Results) -> None:
    variants = list(KAFKA_VARIANTS)
    ref_python = reference_python()
    if ref_python is None:
        variants.remove("reference")
        results.notes.append("kafka-python reference skipped: Python >= 3.12 and "
                             "BENCH_REFERENCE_PYTHON (a 3.11 interpreter) is not set")
    for rep in range(plan.repeats):
        for variant in variants:
            log(f"kafka {variant} (repeat {rep + 1}/{plan.repeats})")
            topic = topic_name(variant)
            create_topic(bootstrap, topic)
            work = Path(tempfile.mkdtemp(prefix=f"{variant}-", dir=tmp))
            ready, cout, out = work / "ready", work / "consumer.json", work / "result.json"
            consumer = spawn("consumer", bootstrap, topic, "paced", str(plan.paced_count),
                             str(ready), str(cout), "120")
            wait_file(ready, 30, consumer)
            python = ref_python if variant == "reference" else None
            child = spawn("kafka_bench", variant, bootstrap, topic, str(plan.paced_count),
                          str(plan.max_count), str(work), str(out), python=python)
            if finish(child, 240) != 0:
                raise RuntimeError(f"kafka variant {variant} failed")
            finish(consumer, 60)
            record_kafka(variant, read_json(out), read_json(cout), results)


def record_kafka(variant: str, run: dict[str, Any], consumed: dict[str, Any],
                 results: Results) -> None:
    add = results.add
    for phase in ("paced", "max"):
        for q in ("p50", "p99"):
            add(f"kafka.caller_{phase}.{q}_us", variant, run[f"caller_{phase}"][q])
    lat = consumed["latencies_ns"]
    for q in (50, 95, 99):
        add(f"kafka.e2e.p{q}_ms", variant, latency_ms(lat, q))
    add("kafka.e2e.received_fraction", variant, len(lat) / consumed["expected"])
    add("kafka.throughput_eps", variant, run["throughput"])
    add("kafka.publish_rate_eps", variant, run["publish_rate"])
    if "caller_cpu_us" in run:
        add("kafka.caller_cpu_us", variant, run["caller_cpu_us"])
        add("kafka.process_cpu_us", variant, run["process_cpu_us"])
    add("kafka.confirmed", variant, 1.0 if run["confirmed"] else 0.0)
    add("kafka.rss_mb", variant, run["memory_end"]["rss_kb"] / 1024)
    add("kafka.peak_rss_mb", variant, run["memory_end"]["hwm_kb"] / 1024)
    if variant in ("oae_spool", "oae_spool_alo"):  # the relay is a process of its own
        add("kafka.relay_cpu_us", variant, run["relay_cpu_us"])
        add("kafka.all_cpu_us", variant, run["all_cpu_us"])
        if run.get("relay_memory"):
            add("kafka.relay_peak_rss_mb", variant, run["relay_memory"]["hwm_kb"] / 1024)
    if variant == "oae_spool":
        add("kafka.spool.wchar_per_event", variant, run["wchar_per_event"])
        add("kafka.spool.write_bytes_per_event", variant, run["write_bytes_per_event"])
        add("kafka.spool.disk_growth_per_event", variant, run["spool_growth_per_event"])
        add("kafka.spool.relay_write_bytes_per_event", variant,
            run["relay_write_bytes_per_event"])


# -- the relay: CPU at a steady rate, memory under a backlog ---------------------------------
RATES = (100.0, 10.0, 0.0)  # events/s: the design's 100 orders/s, a quiet day, idle
RATE_VARIANTS = ("raw", "oae_spool", "oae_spool_alo")


def relay_family(plan: Plan, bootstrap: str, tmp: Path, results: Results) -> None:
    for rep in range(plan.repeats):
        for rate in RATES:
            for variant in RATE_VARIANTS:
                log(f"relay: {variant} at {rate:g}/s (repeat {rep + 1}/{plan.repeats})")
                topic = topic_name(f"rate-{variant}")
                create_topic(bootstrap, topic)
                work = Path(tempfile.mkdtemp(prefix=f"rate-{variant}-", dir=tmp))
                out = work / "result.json"
                child = spawn("relay_cost", "rate", variant, bootstrap, topic, str(rate),
                              str(plan.rate_seconds), str(work), str(out))
                if finish(child, plan.rate_seconds + 120) != 0:
                    raise RuntimeError(f"relay cost {variant} at {rate:g}/s failed")
                run = read_json(out)
                results.add(f"relay.cpu_pct.rate{rate:g}", variant, run["cpu_pct"])
                results.add(f"relay.app_cpu_pct.rate{rate:g}", variant, run["app_cpu_pct"])
                results.add(f"relay.relay_cpu_pct.rate{rate:g}", variant, run["relay_cpu_pct"])
                results.add("relay.confirmed", variant, 1.0 if run["confirmed"] else 0.0)
        log(f"relay: a backlog of {plan.backlog_events:,} events (repeat {rep + 1})")
        topic = topic_name("backlog")
        create_topic(bootstrap, topic)
        work = Path(tempfile.mkdtemp(prefix="backlog-", dir=tmp))
        child = spawn("relay_cost", "backlog", bootstrap, topic, str(plan.backlog_events),
                      str(work), str(work / "result.json"))
        if finish(child, 900) != 0:
            raise RuntimeError("relay backlog run failed")
        run = read_json(work / "result.json")
        for key in ("relay_peak_rss_mb", "drain_rate", "relay_cpu_us", "journal_rate"):
            results.add(f"relay.backlog.{key}", "oae_spool", run[key])
        results.add("relay.backlog.delivered_fraction", "oae_spool",
                    1 - run["left"] / run["events"])


# -- Socket.IO --------------------------------------------------------------------------------
def post(port: int, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def wait_port(port: int, proc: Any, timeout: float = 20.0) -> None:
    from openalgo_events.devbroker import port_open

    deadline = time.monotonic() + timeout
    while not port_open("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server on port {port} did not start")
        time.sleep(0.02)


def socketio_family(plan: Plan, tmp: Path, results: Results) -> None:
    from openalgo_events.devbroker import free_port

    port = free_port()
    server = spawn("sio_server", str(port))
    try:
        wait_port(port, server)
        setups = [("websocket", 1), ("polling", 1)]
        setups += [("websocket", n) for n in plan.fanout_sizes if n > 1]
        for transport, clients in setups:
            socketio_setup(plan, port, transport, clients, tmp, results)
    finally:
        stop(server)


def socketio_setup(plan: Plan, port: int, transport: str, clients: int, tmp: Path,
                   results: Results) -> None:
    log(f"socketio: {clients} client(s) over {transport}")
    work = Path(tempfile.mkdtemp(prefix=f"sio-{transport}-{clients}-", dir=tmp))
    groups = [clients] if clients <= 100 else [clients // 2, clients - clients // 2]
    procs = []
    for g, size in enumerate(groups):
        procs.append((spawn("sio_clients", f"http://127.0.0.1:{port}", str(size), transport,
                            str(work / f"ready{g}"), str(work / f"out{g}.json"), "600"),
                      work / f"ready{g}", work / f"out{g}.json"))
    try:
        for proc, ready, _ in procs:
            wait_file(ready, 180, proc)
        single = clients == 1
        count, rate = (plan.sio_paced, 100) if single else (plan.fanout_events, 10)
        callers: dict[str, list[list[int]]] = defaultdict(list)
        for rep in range(plan.repeats):
            for variant in ("raw", "oae"):
                answer = post(port, "/bench/publish", {"variant": variant, "count": count,
                                                       "rate": rate, "tag": f"{variant}-{rep}"})
                callers[variant].append(answer["caller_ns"])
        post(port, "/bench/done", {})
        records: list[list[list[Any]]] = []
        for proc, _, out in procs:
            finish(proc, 120)
            records += read_json(out)["records"]
    finally:
        for proc, _, _ in procs:
            stop(proc)
    key = f"{transport}_{clients}"
    for variant, runs in callers.items():
        for rep, timings in enumerate(runs):
            tag = f"{variant}-{rep}"
            by_seq: dict[int, list[int]] = defaultdict(list)
            for client in records:
                for phase, seq, lat in client:
                    if phase == tag:
                        by_seq[seq].append(lat)
            complete = [max(v) for v in by_seq.values() if len(v) == clients]
            delivered = sum(len(v) for v in by_seq.values()) / (count * clients)
            name = f"socketio.{key}"
            results.add(f"{name}.caller.p50_us", variant, percentile(timings, 50) / 1000)
            results.add(f"{name}.caller.p99_us", variant, percentile(timings, 99) / 1000)
            results.add(f"{name}.delivered_fraction", variant, delivered)
            if single:
                lats = [lat for v in by_seq.values() for lat in v]
                for q in (50, 95, 99):
                    results.add(f"{name}.e2e.p{q}_ms", variant, latency_ms(lats, q))
            else:
                results.add(f"{name}.last_client.p50_ms", variant, latency_ms(complete, 50))
                results.add(f"{name}.last_client.p95_ms", variant, latency_ms(complete, 95))


# -- the order endpoint -----------------------------------------------------------------------
def orders_family(plan: Plan, bootstrap: str, tmp: Path, results: Results) -> None:
    from openalgo_events.devbroker import free_port

    for rep in range(plan.repeats):
        for delay in plan.broker_delays_ms:
            for events in ("off", "raw", "on", "on_alo"):
                log(f"orders: broker {delay:g} ms, events {events} "
                    f"(repeat {rep + 1}/{plan.repeats})")
                orders_run(plan, bootstrap, tmp, results, delay, events, free_port())


def orders_run(plan: Plan, bootstrap: str, tmp: Path, results: Results, delay: float,
               events: str, port: int) -> None:
    concurrency = 100
    topic = topic_name(f"orders-{events}")
    work = Path(tempfile.mkdtemp(prefix=f"orders-{events}-", dir=tmp))
    consumer = None
    if events != "off":
        create_topic(bootstrap, topic)
        consumer = spawn("consumer", bootstrap, topic, "load",
                         str(plan.order_rounds * concurrency), str(work / "ready"),
                         str(work / "consumer.json"), "60")
        wait_file(work / "ready", 30, consumer)
    server = spawn("order_server", events, str(port), bootstrap, topic, str(work), str(delay))
    try:
        wait_port(port, server)
        load = spawn("order_load", str(port), str(plan.order_sequential), str(concurrency),
                     str(plan.order_rounds), str(work / "load.json"))
        if finish(load, 300) != 0:
            raise RuntimeError("order load failed")
        if consumer is not None:
            finish(consumer, 70)
    finally:
        stop(server)
        if consumer is not None:
            stop(consumer)
    run = read_json(work / "load.json")
    variant, prefix = f"events_{events}", f"orders.delay{delay:g}"
    results.add(f"{prefix}.sequential.p50_ms", variant, latency_ms(run["sequential_ns"], 50))
    results.add(f"{prefix}.sequential.p99_ms", variant, latency_ms(run["sequential_ns"], 99))
    for q in (50, 95, 99):
        results.add(f"{prefix}.load100.p{q}_ms", variant, latency_ms(run["load_ns"], q))
    results.add(f"{prefix}.load100.orders_per_s", variant,
                len(run["load_ns"]) / run["load_seconds"])
    if consumer is not None:
        consumed = read_json(work / "consumer.json")
        lat = consumed["latencies_ns"]
        for q in (50, 95, 99):
            results.add(f"{prefix}.event_delivery.p{q}_ms", variant, latency_ms(lat, q))
        results.add(f"{prefix}.event_delivery.received_fraction", variant,
                    len(lat) / consumed["expected"])


# -- the run ----------------------------------------------------------------------------------
def machine_info(bootstrap: str, started_broker: bool) -> dict[str, Any]:
    versions = {}
    for dist in ("openalgo-events", "confluent-kafka", "kafka-python", "python-socketio",
                 "python-engineio", "Flask-SocketIO", "Flask", "aiohttp", "simple-websocket"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    try:
        import confluent_kafka

        versions["librdkafka"] = confluent_kafka.libversion()[0]
    except ImportError:
        pass
    return {"cpu_count": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "load_average_at_start": os.getloadavg(),
            "broker": "Tansu dev broker (started by the run)" if started_broker
            else f"KAFKA_BOOTSTRAP_SERVERS={bootstrap}", "versions": versions}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, short phases")
    parser.add_argument("--repeats", type=int, help="repeats per figure (default 3; quick 1)")
    parser.add_argument("--only", default=",".join(FAMILIES),
                        help=f"comma-separated subset of {', '.join(FAMILIES)}")
    parser.add_argument("--out", default=str(RESULTS), help="results directory")
    args = parser.parse_args(argv)
    plan = Plan.make(args.quick, args.repeats)
    families = [f.strip() for f in args.only.split(",") if f.strip()]
    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
    if not bootstrap and {"kafka", "relay", "orders"} & set(families):
        from openalgo_events.devbroker import DevBroker

        broker = DevBroker().start()
        bootstrap = broker.bootstrap_servers
    info = machine_info(bootstrap, broker is not None)
    results = Results()
    tmp = Path(tempfile.mkdtemp(prefix="openalgo-bench-"))
    started = time.monotonic()
    try:
        runners = {"kafka": lambda: kafka_family(plan, bootstrap, tmp, results),
                   "relay": lambda: relay_family(plan, bootstrap, tmp, results),
                   "socketio": lambda: socketio_family(plan, tmp, results),
                   "orders": lambda: orders_family(plan, bootstrap, tmp, results)}
        for family in families:
            try:
                runners[family]()
            except Exception as exc:  # report what was measured, and say what was not
                log(f"{family} failed: {exc!r}")
                results.notes.append(f"the {family} benchmarks failed part-way: {exc!r}")
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    info["load_average_at_end"] = os.getloadavg()
    info["duration_seconds"] = round(time.monotonic() - started, 1)
    from .report import write_reports

    paths = write_reports(Path(args.out), date.today().isoformat(), info, plan, results,
                          quick=args.quick)
    for path in paths:
        log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
