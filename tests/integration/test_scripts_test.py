"""`scripts/test` says what it is doing as each long set-up step begins (pip, npm, the lint,
Maven, the Kafka cluster): on a bare machine these take minutes, and a silent terminal looks
hung. Run for real: its own cluster, Kafka's jars resolved anew into an empty cache."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import processes_naming

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_scripts_test_announces_each_long_step_as_it_begins(tmp_path):
    """With no broker named and an empty cache, scripts/test prints one line as it begins
    installing with pip, installing npm packages, linting, starting the cluster and resolving
    Kafka with Maven, in that order, the cluster's line well before the cluster is ready; then
    it runs the tests it was given and stops its cluster."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KAFKA_", "ORDER_EVENT_", "OPENALGO_EVENTS_"))}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), TMPDIR=str(tmp_path))
    script = subprocess.Popen([str(ROOT / "scripts" / "test"), "-q", "-p", "no:cacheprovider",
                               "tests/unit/test_words_stand_alone.py"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    timed: list[tuple[float, str]] = []
    try:
        assert script.stdout is not None
        for line in script.stdout:  # the test's timeout bounds the wait
            timed.append((time.monotonic(), line.rstrip("\n")))
        script.wait(60)
    finally:
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGTERM)
            script.wait(60)
        if script.stdout is not None:
            script.stdout.close()
        for pid in processes_naming(str(tmp_path)):  # only this run's cluster
            os.kill(pid, signal.SIGKILL)
    text = "\n".join(line for _, line in timed)
    assert script.returncode == 0, text
    expected = [
        "scripts/test: installing pip, then openalgo-events with its dev extra, into .venv "
        "(pip)",
        "scripts/test: installing the page's npm packages (npm ci)",
        "scripts/test: linting (ruff) and type-checking (mypy)",
        "scripts/test: starting a 3-node Apache Kafka cluster in "
        f"{tmp_path}/openalgo-events-cluster.",
        f"resolving Kafka 4.4.0's jars with Maven into {tmp_path}/cache/openalgo-events/"
        "kafka-4.4.0 (once; cached for later runs)",
        "scripts/test: 3-node Kafka cluster at 127.0.0.1:",
    ]
    found = [next(i for i, (_, line) in enumerate(timed) if line.startswith(start))
             for start in expected]
    assert found == sorted(found), text
    started, ready = timed[found[3]][0], timed[found[5]][0]
    assert ready - started > 5, text  # announced as it began, not once it was done
    assert "passed" in timed[-1][1], text
    assert processes_naming(str(tmp_path)) == []
