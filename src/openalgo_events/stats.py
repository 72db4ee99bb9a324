"""Counters and latency observations, kept without any metrics library.

The Prometheus exporter (``openalgo_events.integrations.metrics``) reads a snapshot; the core
imports nothing optional.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import repeat
from typing import Any

from ._threads import new_lock

# Upper bounds in seconds, shared by every latency histogram.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
           0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
FOLD_AT = 2048  # records queued by hot paths before the recording thread folds them in

Labels = tuple[tuple[str, str], ...]
Key = tuple[str, Labels]


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe_all(self, values: Sequence[float]) -> None:
        # bisect_left: the first bound >= the value; counted per bucket at C speed
        for bucket, n in Counter(map(bisect_left, repeat(BUCKETS), values)).items():
            self.counts[bucket] += n
        self.total += sum(values)
        self.count += len(values)


class Stats:
    """Thread-safe named counters and histograms with labels.

    Hot paths (a count or a latency per event) only append to a queue, which needs no lock
    (deque appends are atomic); the queue is folded into the totals on every read, and by the
    recording thread once it holds ``FOLD_AT`` records.

    >>> s = Stats(); s.incr("published", event_type="order_event"); s.count("published")
    1
    """

    def __init__(self) -> None:
        self._lock = new_lock()
        self._counters: Counter[Key] = Counter()
        self._histograms: dict[Key, Histogram] = {}
        self._counted: deque[Key] = deque()
        self._observed: dict[Key, deque[float]] = {}

    @staticmethod
    def key(name: str, **labels: str) -> Key:
        """The key of ``name`` with ``labels``: a caller counting per event keeps its keys."""
        return name, tuple(sorted(labels.items()))

    def incr(self, name: str, amount: int = 1, **labels: str) -> None:
        self.add(self.key(name, **labels), amount)

    def add(self, key: Key, amount: int = 1) -> None:
        if amount != 1:
            with self._lock:
                self._counters[key] += amount
            return
        self._counted.append(key)
        if len(self._counted) >= FOLD_AT:
            self._fold()

    def observe_all(self, key: Key, values: Sequence[float]) -> None:
        queue = self._observed.get(key)
        if queue is None:
            with self._lock:
                queue = self._observed.setdefault(key, deque())
        queue.extend(values)
        if len(queue) >= FOLD_AT:
            self._fold()

    def _fold(self) -> None:
        """Move the queued records into the totals (each record once, whoever folds)."""
        with self._lock:
            counted = self._counted
            self._counters.update([counted.popleft() for _ in range(len(counted))])
            for key, queue in self._observed.items():
                if queue:
                    hist = self._histograms.get(key)
                    if hist is None:
                        hist = self._histograms[key] = Histogram()
                    hist.observe_all([queue.popleft() for _ in range(len(queue))])

    @staticmethod
    @lru_cache(maxsize=4096)
    def event_key(name: str, event_type: str, transport: str) -> Key:
        """``key(name, event_type=..., transport=...)``, built once per combination: transports
        count every event they accept."""
        return Stats.key(name, event_type=event_type, transport=transport)

    def count(self, name: str, **labels: str) -> int:
        """Sum of ``name`` over every label set that includes ``labels``."""
        want = set(labels.items())
        self._fold()
        with self._lock:
            return sum(v for (n, ls), v in self._counters.items() if n == name and want <= set(ls))

    def export(self) -> dict[str, Any]:
        """The snapshot as plain JSON (the relay's status carries it to the app's /metrics)."""
        snapshot = self.snapshot()
        return {
            "counters": [[name, [list(kv) for kv in labels], value]
                         for (name, labels), value in snapshot["counters"].items()],
            "histograms": [[name, [list(kv) for kv in labels], h.counts, h.total, h.count]
                           for (name, labels), h in snapshot["histograms"].items()],
        }

    @staticmethod
    def imported(doc: Any) -> dict[str, Any]:
        """``export``'s document back as a snapshot (empty when it is not one)."""
        counters: dict[Key, int] = {}
        histograms: dict[Key, Histogram] = {}
        try:
            for name, labels, value in doc.get("counters", []):
                counters[(name, tuple(tuple(kv) for kv in labels))] = int(value)
            for name, labels, counts, total, count in doc.get("histograms", []):
                if len(counts) == len(BUCKETS) + 1:
                    histograms[(name, tuple(tuple(kv) for kv in labels))] = Histogram(
                        [int(c) for c in counts], float(total), int(count))
        except (AttributeError, TypeError, ValueError):
            return {"counters": {}, "histograms": {}}
        return {"counters": counters, "histograms": histograms}

    def snapshot(self) -> dict[str, Any]:
        self._fold()
        with self._lock:
            return {
                "counters": dict(self._counters),
                "histograms": {
                    k: Histogram(list(h.counts), h.total, h.count)
                    for k, h in self._histograms.items()
                },
            }
