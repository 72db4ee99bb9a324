"""Counters and histograms: exact totals whether records are folded on read or by the recorder."""

from __future__ import annotations

import threading

from openalgo_events.stats import BUCKETS, FOLD_AT, Stats


def test_counts_and_histograms_are_exact_across_threads_and_folds():
    stats = Stats()
    published = Stats.key("published", event_type="order_event", transport="kafka")
    latency = Stats.key("publish_latency")
    per_thread = FOLD_AT * 3 + 8  # several folds by the recording threads, a rest folded on read

    def record() -> None:
        for i in range(per_thread):
            stats.add(published)
            stats.observe_all(latency, (0.0002 if i % 2 else 0.003,))

    threads = [threading.Thread(target=record) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats.incr("delivered", 5, event_type="order_event")

    total = 4 * per_thread
    assert stats.count("published") == total
    assert stats.count("published", transport="kafka", event_type="order_event") == total
    assert stats.count("delivered") == 5
    hist = stats.snapshot()["histograms"][latency]
    assert hist.count == total
    fast, slow = BUCKETS.index(0.00025), BUCKETS.index(0.005)
    assert hist.counts[fast] == hist.counts[slow] == total // 2
    assert sum(hist.counts) == total
    assert abs(hist.total - (total // 2) * (0.0002 + 0.003)) < 1e-6
