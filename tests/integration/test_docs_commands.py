"""docs/consumers.md's kcat commands and kafka-python example run as printed against the
cluster (Debian's kcat, librdkafka 2.0.2; kafka-python reading the snappy-compressed topic)."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from openalgo_events import KafkaEventPublisher, Settings
from tests.support import create_topic, wait_for

pytestmark = pytest.mark.broker
DOC = Path(__file__).resolve().parents[2] / "docs" / "consumers.md"


def section(title: str) -> str:
    return DOC.read_text().split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def kcat_commands() -> list[str]:
    """The kcat section's shell commands, backslash-continued lines joined."""
    blocks = [block for block in re.findall(r"```sh\n(.*?)```", section("kcat"), re.S)
              if block.startswith("kcat ")]
    assert len(blocks) == 2, "docs/consumers.md's kcat section changed: update this test"
    return [block.replace("\\\n", " ").strip() for block in blocks]


def for_cluster(command: str, bootstrap: str, topic: str) -> str:
    assert "localhost:9092" in command and "from_openalgo_order_events" in command
    return command.replace("localhost:9092", bootstrap).replace("from_openalgo_order_events",
                                                                 topic)


@contextmanager
def running(command: list[str], env: dict[str, str] | None = None,
            tty: bool = False) -> Iterator[list[str]]:
    """Run ``command`` in its own process group; yield its stdout lines as they arrive.

    ``tty``: stdout is a terminal, as for a person typing the command (jq, like most tools,
    holds its output in a buffer when writing to a pipe)."""
    master = slave = -1
    if tty:
        master, slave = pty.openpty()
    process = subprocess.Popen(command, stdout=slave if tty else subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               env=env)
    lines: list[str] = []

    def read_tty() -> None:
        pending = b""
        with contextlib.suppress(OSError):
            while chunk := os.read(master, 4096):
                pending += chunk
                *done, pending = pending.split(b"\n")
                lines.extend(line.decode().rstrip("\r") for line in done)

    if tty:
        os.close(slave)
    reader = threading.Thread(target=read_tty if tty else
                              lambda: lines.extend(process.stdout or []), daemon=True)
    reader.start()
    try:
        yield lines
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        _, err = process.communicate(timeout=15)
        if tty:
            os.close(master)
        reader.join(5)
        assert "Read underflow" not in err and "ApiVersionRequest failed" not in err, err


def publisher_for(bootstrap: str, topic: str, tmp_path: Path) -> KafkaEventPublisher:
    return KafkaEventPublisher(bootstrap, topic, settings=Settings.from_env(
        {"KAFKA_SPOOL_PATH": str(tmp_path / "spool.db")}))


@pytest.fixture(scope="module")
def kcat() -> str:
    path = shutil.which("kcat")
    assert path, "kcat is not installed (scripts/test installs Debian's kcat package)"
    return path


def test_kcat_follow_prints_key_headers_and_value(kcat, kafka_bootstrap, topic, tmp_path):
    """The documented `kcat -C -o end -f ...` follows the topic and prints partition, offset,
    key, the CloudEvents headers and the JSON value of an event published after it started."""
    create_topic(kafka_bootstrap, topic, partitions=5)
    command = for_cluster(kcat_commands()[0], kafka_bootstrap, topic)
    publisher = publisher_for(kafka_bootstrap, topic, tmp_path)
    try:
        with running(["bash", "-c", command]) as lines:
            sent: list[str] = []

            def printed() -> bool:
                # -o end starts at the end once kcat has its partitions: publish until it prints
                sent.append(publisher.publish_order_event("alice", "SBIN-EQ", "BUY", "ORD1",
                                                          "live").event_id)
                return len(lines) >= 2

            wait_for(printed, 30, step=0.5, message="kcat to print an event")
            header_line, value_line = lines[0], lines[1]
        assert re.match(r"partition \d offset \d+ key alice headers ", header_line)
        assert "ce_type=order_event" in header_line and "content-type=application/json" in \
            header_line
        event = json.loads(value_line)
        assert event["event_id"] in sent and f"ce_id={event['event_id']}" in header_line
        assert event["data"]["symbol"] == "SBIN-EQ"
    finally:
        publisher.close(5)


def test_kcat_piped_to_jq_prints_only_alices_orders(kcat, kafka_bootstrap, topic, tmp_path):
    """The documented `kcat ... -o beginning | jq 'select(...)'` prints the data of alice's
    order events only, from the start of the topic."""
    assert shutil.which("jq"), "jq is not installed (scripts/test installs it with kcat)"
    create_topic(kafka_bootstrap, topic, partitions=5)
    publisher = publisher_for(kafka_bootstrap, topic, tmp_path)
    try:
        publisher.publish_order_event("alice", "SBIN-EQ", "BUY", "A1", "live")
        publisher.publish_order_event("bob", "INFY-EQ", "SELL", "B1", "live")
        publisher.publish("order_update", "alice", orderid="A1", order_status="complete")
        publisher.publish_order_event("alice", "TCS-EQ", "SELL", "A2", "analyze")
        assert publisher.flush(30) == 0
    finally:
        publisher.close(5)
    command = for_cluster(kcat_commands()[1], kafka_bootstrap, topic)
    with running(["bash", "-c", command], tty=True) as lines:
        wait_for(lambda: len(lines) >= 2, 30, message="jq's output")
    data = [json.loads(re.sub(r"\x1b\[[0-9;]*m", "", line)) for line in lines]  # jq's colours
    assert [(d["orderid"], d["symbol"], d["mode"]) for d in data] == [
        ("A1", "SBIN-EQ", "live"), ("A2", "TCS-EQ", "analyze")]


def test_the_kafka_python_example_reads_the_snappy_topic(kafka_bootstrap, topic, tmp_path):
    """The documented kafka-python consumer, run as printed, reads the snappy-compressed
    events with their keys and CloudEvents headers."""
    create_topic(kafka_bootstrap, topic, partitions=5)
    match = re.search(r"```python\n(.*?)```", section("Python (kafka-python)"), re.S)
    assert match, "docs/consumers.md lost its kafka-python example"
    script = tmp_path / "kafka_python_consumer.py"
    script.write_text(match.group(1))
    publisher = publisher_for(kafka_bootstrap, topic, tmp_path)
    try:
        ids = [publisher.publish_order_event(user, "SBIN-EQ", "BUY", str(i), "live").event_id
               for i, user in enumerate(["alice", "bob", "carol"])]
        assert publisher.flush(30) == 0
    finally:
        publisher.close(5)
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "KAFKA_ORDER_EVENTS_TOPIC": topic, "CONSUMER_GROUP": f"docs-{uuid.uuid4().hex}"}
    with running([sys.executable, str(script)], env) as lines:
        wait_for(lambda: len(lines) >= 3, 60, message="the example's output")
    printed = sorted(line.split() for line in lines)
    assert printed == sorted([user, "order_event", event_id, event_id]
                             for user, event_id in zip(["alice", "bob", "carol"], ids,
                                                       strict=True))
