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


def test_a_dead_letter_produced_again_is_processed(kafka_bootstrap, topic, tmp_path):
    """Dead letters are recorded by position, not by id: once the cause is fixed, the same value
    produced again to the ESB topic (same event_id, new offset) is handled."""
    from openalgo_events.inbound import EsbConsumer
    from tests.integration.inbound_support import consumer_settings

    create_topic(kafka_bootstrap, topic)
    create_topic(kafka_bootstrap, f"{topic}.dlq")
    fixed: list[bool] = []
    handled: list[str] = []

    def downstream(envelope, context):
        if not fixed:
            raise RuntimeError("downstream down")
        handled.append(envelope.event_id)

    settings = consumer_settings(kafka_bootstrap, topic, tmp_path,
                                 KAFKA_CONSUMER_DLQ_TOPIC=f"{topic}.dlq")
    consumer = EsbConsumer(settings, handlers={"downstream": downstream})
    message = esb_message("downstream", "alice", {})
    produce(kafka_bootstrap, topic, message)
    consumer.start()
    try:
        wait_for(lambda: consumer.health()["dead_lettered"] == 1, 30, message="dead-lettered")
        fixed.append(True)
        produce(kafka_bootstrap, topic, message)  # the re-drive: same value, same event id
        wait_for(lambda: handled, 30, message="the re-driven copy handled")
    finally:
        assert consumer.stop()
    assert handled == [message["event_id"]]
