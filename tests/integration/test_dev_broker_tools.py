"""The operators' tools against the bundled dev broker (Tansu), which answers a "latest
offset" request with the start of the partition's last batch rather than its end:
`openalgo-events tail` still starts at the end, and docs/consumers.md says what works there
(Debian's kcat does not connect; `tail` and the Python clients do)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from openalgo_events import EventPublisher, MemoryTransport
from openalgo_events.devbroker import DevBroker
from tests.integration.test_docs_commands import DOC, running, section
from tests.support import wait_for

pytestmark = pytest.mark.broker
TOPIC = "from_openalgo_order_events"


@pytest.fixture
def dev_broker() -> Iterator[str]:
    """A dev broker on a free port with the order topic (one partition: records keep their
    order); yields its bootstrap servers."""
    with DevBroker() as broker:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers, "log_level": 0})
        for future in admin.create_topics([NewTopic(TOPIC, 1, 1)]).values():
            future.result(10)
        yield broker.bootstrap_servers


def produce(bootstrap: str, *orderids: str) -> list[dict[str, object]]:
    """Produce one order_event per order id, in one batch (as the relay sends); return them."""
    envelopes = [EventPublisher(MemoryTransport()).publish_order_event(
        "alice", "SBIN-EQ", "BUY", orderid, "live") for orderid in orderids]
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 200, "log_level": 0})
    for envelope in envelopes:
        producer.produce(TOPIC, envelope.value, envelope.key, headers=envelope.headers())
    assert producer.flush(10) == 0
    return [envelope.to_dict() for envelope in envelopes]


def test_tail_on_the_dev_broker_shows_only_new_events(dev_broker, cli_env):
    """After a batch of 5 events is on the topic, `openalgo-events tail --json` started with no
    --since prints none of them: the first line it prints is the event published after it said
    it was following the topic."""
    produce(dev_broker, *(f"OLD-{n}" for n in range(5)))
    cli_env(KAFKA_BOOTSTRAP_SERVERS=dev_broker)
    tail = subprocess.Popen([sys.executable, "-m", "openalgo_events", "tail", "--json",
                             "--max-messages", "1", "--timeout", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert tail.stderr is not None
        ready = tail.stderr.readline()
        assert ready.startswith(f"following {TOPIC} (1 partition) from the end"), ready
        [new] = produce(dev_broker, "NEW")
        out, err = tail.communicate(timeout=60)
    finally:
        tail.kill()
        tail.wait(10)
    assert tail.returncode == 0, err
    assert [json.loads(line) for line in out.splitlines()] == [new]


def test_what_the_consumer_guide_says_of_the_dev_broker_holds(dev_broker):
    """docs/consumers.md says Debian's kcat cannot talk to the dev broker and offers `tail`:
    kcat indeed fails there (ApiVersionRequest), and the guide's tail line is there."""
    text = section("kcat")
    assert "dev broker" in text and "openalgo-events tail" in text, DOC
    kcat = shutil.which("kcat")
    assert kcat, "kcat is not installed (scripts/test installs Debian's kcat package)"
    done = subprocess.run([kcat, "-b", dev_broker, "-L", "-m", "3"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    assert "ApiVersionRequest failed" in done.stderr, done.stderr


def test_the_guides_tail_line_works_on_the_dev_broker(dev_broker, cli_env):
    """The guide's `openalgo-events tail ... | jq` line, run as printed against the dev broker,
    prints the data of alice's order events only, from the start of the topic."""
    [command] = [block.replace("\\\n", " ").strip()
                 for block in re.findall(r"```sh\n(.*?)```", section("kcat"), re.S)
                 if "openalgo-events tail" in block]
    produce(dev_broker, "A1")
    bob = EventPublisher(MemoryTransport()).publish_order_event("bob", "INFY-EQ", "SELL", "B1",
                                                                "live")
    producer = Producer({"bootstrap.servers": dev_broker, "log_level": 0})
    producer.produce(TOPIC, bob.value, bob.key, headers=bob.headers())
    assert producer.flush(10) == 0
    produce(dev_broker, "A2")
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": dev_broker,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with running(["bash", "-c", command], env=env, tty=True) as lines:
        wait_for(lambda: len(lines) >= 2, 30, message="jq's output")
    data = [json.loads(re.sub(r"\x1b\[[0-9;]*m", "", line)) for line in lines]  # jq's colours
    assert [(d["orderid"], d["symbol"]) for d in data] == [("A1", "SBIN-EQ"), ("A2", "SBIN-EQ")]
