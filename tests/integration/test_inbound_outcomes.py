"""Inbound outcomes are recorded once (issue 15, case 5): a crash between a message's outcome
and its offset commit neither handles a dead-lettered message again nor dead-letters it twice."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.integration.inbound_support import esb_message, produce
from tests.support import create_topic, read_topic, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]
WORKER = Path(__file__).with_name("inbound_outcome_worker.py")
ROOT = Path(__file__).parents[2]


def _calls(out: Path) -> list[str]:
    return out.read_text().splitlines() if out.exists() else []


def test_crash_between_outcome_and_commit_settles_each_message_once(kafka_bootstrap, topic,
                                                                    tmp_path):
    """One batch: a message whose handler always fails, a malformed one, then one that kills
    the process (SIGKILL, before the batch's commit). After a restart in the same group the
    first two are skipped (their handler is not called again) and the dead-letter topic holds
    exactly two records; the third is handled."""
    dlq = f"{topic}.dlq"
    create_topic(kafka_bootstrap, topic)  # one partition: the three messages form one batch
    create_topic(kafka_bootstrap, dlq)
    failing = esb_message("fails", "alice", {})
    crashing = esb_message("crash", "alice", {})
    produce(kafka_bootstrap, topic, failing, b"not json at all", crashing)
    out, marker = tmp_path / "calls.txt", tmp_path / "crashed"
    args = [sys.executable, str(WORKER), kafka_bootstrap, topic, f"group-{uuid.uuid4().hex[:8]}",
            str(tmp_path / "state.db"), str(out), str(marker)]

    first = subprocess.Popen(args, cwd=ROOT)
    assert first.wait(60) == -signal.SIGKILL
    assert _calls(out) == [f"fails {failing['event_id']}"] * 2 + [
        f"crash {crashing['event_id']}"]

    second = subprocess.Popen(args, cwd=ROOT)
    try:
        wait_for(lambda: len(_calls(out)) >= 4, 60, message="the crash message handled")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0
    assert _calls(out)[3:] == [f"crash {crashing['event_id']}"]  # fails not handled again
    dead = read_topic(kafka_bootstrap, dlq, 3, timeout=5)
    assert sorted(m.value() for m in dead) == sorted([
        b"not json at all", json.dumps(failing).encode()])
