"""The test cluster's `start` (tests/kafka_cluster.py) with an interpreter that cannot import
confluent-kafka: it fails in seconds with the real cause and leaves no JVM of its cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support import processes_naming

ROOT = Path(__file__).resolve().parents[2]


def test_start_without_confluent_kafka_fails_fast_and_leaves_nothing_running(tmp_path):
    """`python -m tests.kafka_cluster start` where `import confluent_kafka` raises ImportError
    exits 1 within 20 s with one line naming confluent_kafka, the ImportError's own text and
    the fix, and no process of its cluster (a JVM naming its state directory) is left."""
    shim = tmp_path / "shim" / "confluent_kafka"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(
        "raise ImportError('confluent_kafka is shimmed away for this test')\n")
    state = tmp_path / "cluster"
    env = {**os.environ, "PYTHONPATH": str(shim.parent)}
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "tests.kafka_cluster", "start",
                               "--dir", str(state)], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=180)
        elapsed = time.monotonic() - started
        assert done.returncode == 1, done.stdout + done.stderr
        assert elapsed < 20, (elapsed, done.stderr)
        assert done.stdout == ""
        [line] = done.stderr.splitlines()
        assert line.startswith(f"kafka_cluster: {sys.executable} cannot import confluent_kafka "
                               "(confluent_kafka is shimmed away for this test)"), line
        assert "pip install confluent-kafka" in line and ".venv/bin/python" in line, line
        assert processes_naming(str(state)) == []
    finally:
        for pid in processes_naming(str(state)):  # only what this test's start spawned
            os.kill(pid, signal.SIGKILL)


def test_start_interrupted_before_ready_stops_the_nodes_it_started(tmp_path):
    """Ctrl-C while `start` waits for its brokers (here a client whose metadata requests
    always fail, so they never look ready) stops every node that start spawned: within 60 s
    no process of its cluster is left, and it says it was interrupted."""
    shim = tmp_path / "shim" / "confluent_kafka"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("class KafkaException(Exception):\n    pass\n")
    (shim / "admin.py").write_text(
        "from confluent_kafka import KafkaException\n\n\n"
        "class AdminClient:\n"
        "    def __init__(self, config):\n        pass\n\n"
        "    def list_topics(self, timeout=None):\n"
        "        raise KafkaException('no metadata from this shim')\n")
    state = tmp_path / "cluster"
    env = {**os.environ, "PYTHONPATH": str(shim.parent)}
    start = subprocess.Popen([sys.executable, "-m", "tests.kafka_cluster", "start",
                              "--dir", str(state)], cwd=ROOT, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(processes_naming(f"{state}/node-", "kafka.Kafka")) < 5:
            assert start.poll() is None, start.communicate()
            assert time.monotonic() < deadline, "start never spawned its 5 nodes"
            time.sleep(0.1)
        start.send_signal(signal.SIGINT)
        _, err = start.communicate(timeout=60)
        assert start.returncode == 130, err
        assert err.strip().splitlines()[-1] == "kafka_cluster: interrupted", err
        assert [pid for pid in processes_naming(str(state)) if pid != start.pid] == []
    finally:
        if start.poll() is None:
            start.kill()
            start.wait(10)
        for pid in processes_naming(str(state)):  # only what this test's start spawned
            os.kill(pid, signal.SIGKILL)
