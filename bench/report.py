"""Turns a run's results into bench/results/<date>.json, .md and .png (and latest.md/png)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .run import Plan, Results

Summary = dict[str, dict[str, dict[str, Any]]]

KAFKA_NAMES = {"reference": "design reference (kafka-python 2.0.2)",
               "raw": "raw confluent-kafka",
               "raw_envelope": "raw confluent-kafka, openalgo-events envelope",
               "oae_memory": "openalgo-events, :memory: (relay thread in process)",
               "oae_spool": "openalgo-events, spool (exactly-once)",
               "oae_spool_alo": "openalgo-events, spool, at-least-once"}
KAFKA_ROWS = [
    ("kafka.caller_paced.p50_us", "caller time per publish at 100/s, p50 (µs)"),
    ("kafka.caller_paced.p99_us", "caller time per publish at 100/s, p99 (µs)"),
    ("kafka.caller_max.p50_us", "caller time per publish at max rate, p50 (µs)"),
    ("kafka.caller_max.p99_us", "caller time per publish at max rate, p99 (µs)"),
    ("kafka.e2e.p50_ms", "end-to-end publish -> consumer at 100/s, p50 (ms)"),
    ("kafka.e2e.p95_ms", "end-to-end at 100/s, p95 (ms)"),
    ("kafka.e2e.p99_ms", "end-to-end at 100/s, p99 (ms)"),
    ("kafka.publish_rate_eps", "publish calls per second, tight loop"),
    ("kafka.throughput_eps", "throughput with delivery confirmed (events/s)"),
    ("kafka.caller_cpu_us", "CPU of the calling thread per event, max rate (µs)"),
    ("kafka.process_cpu_us", "CPU of the whole process per event, max rate (µs)"),
    ("kafka.relay_cpu_us", "CPU of the relay process (and its keeper) per event (µs)"),
    ("kafka.all_cpu_us", "CPU per event, the process and its relay (µs)"),
    ("kafka.peak_rss_mb", "peak RSS of the publishing process (MB)"),
    ("kafka.relay_peak_rss_mb", "peak RSS of the relay process (MB)"),
    ("kafka.rss_mb", "RSS after the run (MB)"),
]
RATE_LABELS = {"100": "100 events/s", "10": "10 events/s", "0": "idle"}
SIO_SETUPS = [("websocket_1", "1 client, websocket"), ("polling_1", "1 client, polling")]


def _get(summary: Summary, figure: str, variant: str) -> float | None:
    cell = summary.get(figure, {}).get(variant)
    return None if cell is None else float(cell["median"])


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def _cell(summary: Summary, figure: str, variant: str) -> str:
    cell = summary.get(figure, {}).get(variant)
    if cell is None:
        return "-"
    if len(cell["runs"]) == 1:
        return _fmt(cell["median"])
    return f"{_fmt(cell['median'])} ({_fmt(cell['min'])} to {_fmt(cell['max'])})"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def targets(s: Summary) -> list[dict[str, Any]]:
    """Each target: the measured value, the limit, met or not (medians of the repeats)."""
    out: list[dict[str, Any]] = []

    def check(name: str, value: float | None, limit: float, at_least: bool, unit: str) -> None:
        met = None if value is None else (value >= limit if at_least else value <= limit)
        out.append({"target": name, "value": value, "limit": limit, "unit": unit,
                    "rule": ">=" if at_least else "<=", "met": met})

    k: Callable[[str, str], float | None] = lambda fig, v: _get(s, fig, v)  # noqa: E731
    # Issue #13's figures for the relay process: throughput, the caller's CPU (against the
    # raw loop that builds our envelope too), end-to-end p95 and the host's added memory.
    # Issue #20's figures for the one-log relay: CPU at the design's rate and idle, throughput,
    # delivery under a burst of orders, the relay's memory under a backlog.
    check("app + relay CPU at 100 events/s / a raw confluent-kafka process at 100/s",
          _ratio(k("relay.cpu_pct.rate100", "oae_spool"), k("relay.cpu_pct.rate100", "raw")),
          1.5, False, "x")
    check("idle relay (and keeper), % of a core",
          k("relay.relay_cpu_pct.rate0", "oae_spool"), 0.2, False, "%")
    check("KAFKA+spool throughput / raw confluent-kafka",
          _ratio(k("kafka.throughput_eps", "oae_spool"), k("kafka.throughput_eps", "raw")),
          0.8, True, "x")
    check("relay peak RSS draining a backlog", k("relay.backlog.relay_peak_rss_mb", "oae_spool"),
          80, False, "MB")
    plain_p95 = k("orders.delay0.event_delivery.p95_ms", "events_raw")
    ours_p95 = k("orders.delay0.event_delivery.p95_ms", "events_on")
    check("event delivery p95, 100 concurrent orders (broker call 0 ms) / plain producer",
          _ratio(ours_p95, plain_p95), 1.5, False, "x")
    check("event delivery p95, 100 concurrent orders (broker call 0 ms)", ours_p95, 200, False,
          "ms")
    for delay in delays(s):
        check(f"order endpoint p95 with events on / plain producer, 100 concurrent orders, "
              f"broker call {delay} ms",
              _ratio(k(f"orders.delay{delay}.load100.p95_ms", "events_on"),
                     k(f"orders.delay{delay}.load100.p95_ms", "events_raw")), 1.1, False, "x")
    check("KAFKA+spool caller CPU per event at max rate / raw loop with our envelope",
          _ratio(k("kafka.caller_cpu_us", "oae_spool"), k("kafka.caller_cpu_us",
                                                         "raw_envelope")), 1.3, False, "x")
    check("KAFKA+spool throughput / design reference",
          _ratio(k("kafka.throughput_eps", "oae_spool"), k("kafka.throughput_eps", "reference")),
          3.0, True, "x")
    check("KAFKA+spool end-to-end p95 / raw",
          _ratio(k("kafka.e2e.p95_ms", "oae_spool"), k("kafka.e2e.p95_ms", "raw")), 1.2, False,
          "x")
    check("KAFKA+spool caller p99 at 100/s / raw produce",
          _ratio(k("kafka.caller_paced.p99_us", "oae_spool"),
                 k("kafka.caller_paced.p99_us", "raw")), 1.5, False, "x")
    hwm_ours, hwm_raw = k("kafka.peak_rss_mb", "oae_spool"), k("kafka.peak_rss_mb", "raw")
    check("RSS added to the publishing host (peak, vs raw confluent-kafka; the relay is "
          "a process of its own)",
          None if hwm_ours is None or hwm_raw is None else hwm_ours - hwm_raw, 10, False, "MB")
    check("SOCKETIO caller p50 / raw socketio.emit (1 client, websocket)",
          _ratio(k("socketio.websocket_1.caller.p50_us", "oae"),
                 k("socketio.websocket_1.caller.p50_us", "raw")), 1.2, False, "x")
    check("SOCKETIO caller p99 / raw socketio.emit (1 client, websocket)",
          _ratio(k("socketio.websocket_1.caller.p99_us", "oae"),
                 k("socketio.websocket_1.caller.p99_us", "raw")), 1.2, False, "x")
    check("SOCKETIO end-to-end p95, websocket, 1 client",
          k("socketio.websocket_1.e2e.p95_ms", "oae"), 2.0, False, "ms")
    check("SOCKETIO end-to-end p95, polling, 1 client",
          k("socketio.polling_1.e2e.p95_ms", "oae"), 5.0, False, "ms")
    check("SOCKETIO 500 clients, p95 to the last client",
          k("socketio.websocket_500.last_client.p95_ms", "oae"), 50.0, False, "ms")
    for delay in delays(s):
        for shape, what in (("load100", "100 concurrent orders"),
                            ("sequential", "one order at a time")):
            on = k(f"orders.delay{delay}.{shape}.p50_ms", "events_on")
            off = k(f"orders.delay{delay}.{shape}.p50_ms", "events_off")
            check(f"order endpoint p50 overhead, {what}, broker call {delay} ms",
                  None if on is None or not off else (on / off - 1) * 100, 5.0, False, "%")
            plain = k(f"orders.delay{delay}.{shape}.p50_ms", "events_raw")
            check(f"order endpoint p50 overhead beyond a plain confluent-kafka producer, {what}, "
                  f"broker call {delay} ms",
                  None if on is None or not plain else (on / plain - 1) * 100, 5.0, False, "%")
    return out


def delays(s: Summary) -> list[str]:
    """The simulated broker delays measured, as they appear in figure names."""
    found = {f.split(".")[1][len("delay"):] for f in s if f.startswith("orders.delay")}
    return sorted(found, key=float)


def markdown(day: str, info: dict[str, Any], plan: Plan, s: Summary, notes: list[str],
             checks: list[dict[str, Any]], quick: bool) -> str:
    lines = [f"# openalgo-events benchmarks, {day}{' (quick run)' if quick else ''}", ""]
    lines += [f"Machine: {info['cpu_count']} CPUs, Python {info['python']}, {info['platform']}; "
              f"load average {_loads(info)}. Broker: {info['broker']}. "
              f"Run time {info['duration_seconds']} s.", "",
              f"Each figure is the median of {plan.repeats} interleaved repeat(s), "
              "min to max in brackets. Kafka variants: acks=all, linger 10 ms, batch 16384 bytes, "
              "no compression (kafka-python 2.0.2 has no snappy codec here), one partition, "
              "each variant in a fresh process. Method: [bench/README.md](../README.md).", ""]
    lines += ["## Targets", "", "| target | measured | limit | met |", "|---|---|---|---|"]
    for c in checks:
        mark = {True: "yes", False: "**no**", None: "not measured"}[c["met"]]
        lines.append(f"| {c['target']} | {_fmt(c['value'])} {c['unit']} | {c['rule']} "
                     f"{_fmt(c['limit'])} {c['unit']} | {mark} |")
    variants = [v for v in KAFKA_NAMES if any(v in s.get(f, {}) for f, _ in KAFKA_ROWS)]
    lines += ["", "## Kafka publishers", "",
              "| figure | " + " | ".join(KAFKA_NAMES[v] for v in variants)
              + " | spool / raw | spool / reference |",
              "|---" * (len(variants) + 3) + "|"]
    for figure, label in KAFKA_ROWS:
        ours = _get(s, figure, "oae_spool")
        row = [label, *(_cell(s, figure, v) for v in variants),
               _fmt(_ratio(ours, _get(s, figure, "raw"))),
               _fmt(_ratio(ours, _get(s, figure, "reference")))]
        lines.append("| " + " | ".join(row) + " |")
    spool_rows = [("kafka.spool.disk_growth_per_event", "spool directory growth on disk"),
                  ("kafka.spool.wchar_per_event", "the app: bytes passed to write() (wchar)"),
                  ("kafka.spool.write_bytes_per_event",
                   "the app: bytes sent to storage (write_bytes)"),
                  ("kafka.spool.relay_write_bytes_per_event",
                   "the relay: bytes sent to storage (ledger, status)")]
    lines += ["", "Spool writes per 404-byte event (max-rate phase; exactly-once):", ""]
    lines += [f"- {label}: {_cell(s, fig, 'oae_spool')}" for fig, label in spool_rows]
    if any(f.startswith("relay.") for f in s):
        lines += ["", "## The relay: CPU at a steady rate, memory under a backlog", "",
                  "CPU as % of one core over the window, user + system, every thread: the raw "
                  "confluent-kafka process alone; ours the app process plus its relay process "
                  "and the relay's keeper.", "",
                  "| figure | raw confluent-kafka | ours, exactly-once | ours, at-least-once | "
                  "exactly-once / raw |", "|---|---|---|---|---|"]
        for rate in RATE_LABELS:
            for fig, what in (("cpu_pct", "app + relay, % of a core"),
                              ("app_cpu_pct", "the app alone"),
                              ("relay_cpu_pct", "the relay and its keeper")):
                figure = f"relay.{fig}.rate{rate}"
                if figure not in s:
                    continue
                lines.append(f"| {RATE_LABELS[rate]}: {what} | {_cell(s, figure, 'raw')} | "
                             f"{_cell(s, figure, 'oae_spool')} | "
                             f"{_cell(s, figure, 'oae_spool_alo')} | "
                             f"{_fmt(_ratio(_get(s, figure, 'oae_spool'), _get(s, figure, 'raw')))}"
                             " |")
        events = plan.backlog_events
        lines += ["", f"A backlog of {events:,} events journaled while no relay ran, then drained "
                  "by a relay process started for it:", ""]
        for fig, label in (("relay_peak_rss_mb", "relay peak RSS (MB)"),
                           ("drain_rate", "drain rate (events/s)"),
                           ("relay_cpu_us", "relay CPU per event (µs)"),
                           ("journal_rate", "journal rate with no relay (events/s)")):
            lines.append(f"- {label}: {_cell(s, f'relay.backlog.{fig}', 'oae_spool')}")
    lines += ["", "## Socket.IO (Flask-SocketIO threading mode, python-socketio clients)", "",
              "| figure | raw socketio.emit | openalgo-events SOCKETIO | ours / raw |",
              "|---|---|---|---|"]
    for key, label in SIO_SETUPS:
        for fig, what in (("caller.p50_us", "caller p50 (µs)"), ("caller.p99_us",
                                                                 "caller p99 (µs)"),
                          ("e2e.p50_ms", "end-to-end p50 (ms)"),
                          ("e2e.p95_ms", "end-to-end p95 (ms)"),
                          ("e2e.p99_ms", "end-to-end p99 (ms)")):
            figure = f"socketio.{key}.{fig}"
            lines.append(f"| {label}: {what} | {_cell(s, figure, 'raw')} | "
                         f"{_cell(s, figure, 'oae')} | "
                         f"{_fmt(_ratio(_get(s, figure, 'oae'), _get(s, figure, 'raw')))} |")
    for n in plan.fanout_sizes:
        key = "websocket_1" if n == 1 else f"websocket_{n}"
        figs = (("e2e.p95_ms", "p95 to the client (ms)"),) if n == 1 else (
            ("last_client.p50_ms", "p50 to the last client (ms)"),
            ("last_client.p95_ms", "p95 to the last client (ms)"),
            ("caller.p99_us", "caller p99 (µs)"))
        for fig, what in figs:
            figure = f"socketio.{key}.{fig}"
            lines.append(f"| fan-out {n} clients: {what} | {_cell(s, figure, 'raw')} | "
                         f"{_cell(s, figure, 'oae')} | "
                         f"{_fmt(_ratio(_get(s, figure, 'oae'), _get(s, figure, 'raw')))} |")
    lines += ["", "## Order endpoint (events off vs KAFKA mode with spool)", "",
              "Werkzeug threaded server; the endpoint validates the order, waits for a simulated "
              "broker REST call (0 ms: the worst case for the relative overhead), then publishes "
              f"order_event. Load: {plan.order_sequential} orders one at a time, then "
              f"{plan.order_rounds} rounds of 100 orders released together by a barrier. "
              "\"Plain producer\" sends the same event with confluent-kafka alone (no spool, no "
              "checks): the share of the overhead that is the Kafka client and the broker, which "
              "here run on the same 2 CPUs as the endpoint and the load.", ""]
    for delay in delays(s):
        lines += [f"Simulated broker call {delay} ms:", "",
                  "| figure | events off | plain producer | events on (exactly-once) | "
                  "events on, at-least-once | on / off | on / plain | at-least-once / plain |",
                  "|---|---|---|---|---|---|---|---|"]
        for fig, label in (("sequential.p50_ms", "one at a time, p50 (ms)"),
                           ("sequential.p99_ms", "one at a time, p99 (ms)"),
                           ("load100.p50_ms", "100 concurrent, p50 (ms)"),
                           ("load100.p95_ms", "100 concurrent, p95 (ms)"),
                           ("load100.p99_ms", "100 concurrent, p99 (ms)"),
                           ("load100.orders_per_s", "100 concurrent, orders/s"),
                           ("event_delivery.p50_ms", "event delivery under load, p50 (ms)"),
                           ("event_delivery.p95_ms", "event delivery under load, p95 (ms)"),
                           ("event_delivery.p99_ms", "event delivery under load, p99 (ms)")):
            figure = f"orders.delay{delay}.{fig}"
            ratio = _ratio(_get(s, figure, "events_on"), _get(s, figure, "events_off"))
            plain = _ratio(_get(s, figure, "events_on"), _get(s, figure, "events_raw"))
            alo = _ratio(_get(s, figure, "events_on_alo"), _get(s, figure, "events_raw"))
            lines.append(f"| {label} | {_cell(s, figure, 'events_off')} | "
                         f"{_cell(s, figure, 'events_raw')} | {_cell(s, figure, 'events_on')} | "
                         f"{_cell(s, figure, 'events_on_alo')} | "
                         f"{_fmt(ratio)} | {_fmt(plain)} | {_fmt(alo)} |")
        lines.append("")
    losses = [f"{fig} {v}: {c['median']}" for fig, by in s.items() if "fraction" in fig
              for v, c in by.items() if c["min"] < 1.0]
    lines += ["", "## Notes", ""]
    lines += [f"- {n}" for n in notes] or []
    lines.append("- Every event was received." if not losses
                 else "- Not every event arrived in time: " + "; ".join(losses))
    return "\n".join(lines) + "\n"


def _loads(info: dict[str, Any]) -> str:
    start = info.get("load_average_at_start") or (0, 0, 0)
    end = info.get("load_average_at_end") or (0, 0, 0)
    return f"{start[0]:.2f} at start, {end[0]:.2f} at end"


def plot(path: Path, s: Summary, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    kafka = [v for v in KAFKA_NAMES if v in s.get("kafka.throughput_eps", {})]
    labels = [KAFKA_NAMES[v].replace(" (", "\n(").replace(", ", ",\n") for v in kafka]

    def bars(ax: Any, groups: list[tuple[str, str]], variants: list[str], names: list[str],
             ylabel: str, log: bool = False) -> None:
        width = 0.8 / max(1, len(groups))
        for g, (figure, label) in enumerate(groups):
            xs = [i + g * width for i in range(len(variants))]
            med = [_get(s, figure, v) or 0 for v in variants]
            cells = [s.get(figure, {}).get(v, {}) for v in variants]
            lo = [m - c.get("min", m) for m, c in zip(med, cells, strict=True)]
            hi = [c.get("max", m) - m for m, c in zip(med, cells, strict=True)]
            ax.bar(xs, med, width, yerr=[lo, hi], capsize=3, label=label)
        ax.set_xticks([i + width * (len(groups) - 1) / 2 for i in range(len(variants))])
        ax.set_xticklabels(names, fontsize=8)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)

    bars(axes[0][0], [("kafka.caller_paced.p50_us", "p50 at 100/s"),
                      ("kafka.caller_paced.p99_us", "p99 at 100/s"),
                      ("kafka.caller_max.p50_us", "p50 at max rate"),
                      ("kafka.caller_max.p99_us", "p99 at max rate")],
         kafka, labels, "caller time per publish (µs, log)", log=True)
    axes[0][0].set_title("Kafka: caller time per publish")
    bars(axes[0][1], [("kafka.e2e.p50_ms", "p50"), ("kafka.e2e.p95_ms", "p95"),
                      ("kafka.e2e.p99_ms", "p99")], kafka, labels, "ms")
    axes[0][1].set_title("Kafka: end-to-end publish -> consumer at 100 events/s")
    bars(axes[1][0], [("kafka.throughput_eps", "delivery confirmed"),
                      ("kafka.publish_rate_eps", "publish calls")], kafka, labels, "events/s")
    axes[1][0].set_title("Kafka: max throughput")
    sio_figs = [("socketio.websocket_1.e2e.p95_ms", "1 client websocket p95"),
                ("socketio.polling_1.e2e.p95_ms", "1 client polling p95"),
                ("socketio.websocket_50.last_client.p95_ms", "50 clients, last, p95"),
                ("socketio.websocket_500.last_client.p95_ms", "500 clients, last, p95")]
    bars(axes[1][1], sio_figs, ["raw", "oae"], ["raw socketio.emit", "openalgo-events"],
         "ms (log)", log=True)
    axes[1][1].set_title("Socket.IO: end-to-end and fan-out")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_reports(out: Path, day: str, info: dict[str, Any], plan: Plan, results: Results,
                  quick: bool) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    summary = results.summary()
    checks = targets(summary)
    stem = out / (f"{day}-quick" if quick else day)
    doc = {"date": day, "quick": quick, "machine": info, "plan": asdict(plan),
           "figures": summary, "targets": checks, "notes": results.notes}
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    paths[0].write_text(json.dumps(doc, indent=1) + "\n")  # the figures first: nothing lost
    text = markdown(day, info, plan, summary, results.notes, checks, quick)
    paths[1].write_text(text + f"\nPlot: ![plot]({paths[2].name})\n")
    plot(paths[2], summary, f"openalgo-events benchmarks, {day}"
         f"{' (quick)' if quick else ''}, {info['cpu_count']} CPUs")
    if not quick:
        (out / "latest.md").write_text(text + "\nPlot: ![plot](latest.png)\n")
        shutil.copyfile(paths[2], out / "latest.png")
        paths += [out / "latest.md", out / "latest.png"]
    return paths
