"""A consumer killed mid-stream and restarted skips nothing; SIGTERM stops it cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.integration.inbound_support import esb_message, produce
from tests.support import create_topic, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]
WORKER = Path(__file__).with_name("inbound_worker.py")
ROOT = Path(__file__).parents[2]


def _handled(out: Path) -> list[str]:
    return out.read_text().split() if out.exists() else []


def test_kill_mid_stream_then_restart_skips_nothing(kafka_bootstrap, topic, tmp_path):
    """kill -9 while messages are being handled, then a restart in the same group: every
    message is handled at least once; a SIGTERM then exits with status 0."""
    create_topic(kafka_bootstrap, topic, partitions=2)
    sent = [esb_message("note", f"user{i % 7}", {"n": i}) for i in range(300)]
    produce(kafka_bootstrap, topic, *sent)
    out = tmp_path / "handled.txt"
    args = [sys.executable, str(WORKER), kafka_bootstrap, topic, f"group-{uuid.uuid4().hex[:8]}",
            str(tmp_path / "state.db"), str(out), "0.01"]

    first = subprocess.Popen(args, cwd=ROOT)
    try:
        wait_for(lambda: len(_handled(out)) >= 60, 40, message="the first 60 handled")
    finally:
        first.kill()
        first.wait(10)
    assert len(_handled(out)) < len(sent), "the worker finished before it was killed"

    second = subprocess.Popen(args, cwd=ROOT)
    try:
        want = {m["event_id"] for m in sent}
        wait_for(lambda: want <= set(_handled(out)), 60, message="every message handled")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0
