"""Socket.IO connection state recovery in KAFKA mode (the bridge), with real python-socketio
clients and the real cluster: what a restarted app no longer holds in memory is read back from
the topic, a client can move to another app process, a gap the topic no longer keeps (or too
long) is reported, a client gets only its own user's events and never a Kafka-only field, and
recovery reads past transaction markers and skips aborted records."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask_socketio import SocketIO

from openalgo_events import EventPublisher, Settings, build_publisher
from openalgo_events.demo import DemoServer
from openalgo_events.integrations.bridge import KafkaSocketIOBridge
from openalgo_events.recovery import AUTH_KEY
from openalgo_events.testing import MemoryTransport
from tests.sio_support import RecoveringClient, rooms_by_user
from tests.support import create_topic, wait_for

pytestmark = pytest.mark.broker
TRANSPORTS = ["polling", "websocket"]


def kafka_settings(bootstrap: str, topic: str, **extra: str) -> Settings:
    return Settings.from_env({"ORDER_EVENT_MODE": "KAFKA", "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                              "KAFKA_ORDER_EVENTS_TOPIC": topic, "KAFKA_SPOOL_PATH": ":memory:",
                              "ORDER_EVENT_SOCKETIO_RECOVERY": "TRUE", **extra})


class KafkaApp:
    """One app process's share: a Flask-SocketIO server and its bridge (recovery from the
    settings), served on a free port."""

    def __init__(self, settings: Settings, active: Callable[[], bool] | None = None) -> None:
        self.flask = Flask(__name__)
        self.socketio = SocketIO(self.flask, async_mode="threading")
        rooms_by_user(self.socketio)
        self.bridge = KafkaSocketIOBridge(settings, self.socketio, active=active).start()
        assert self.bridge.ready.wait(30), self.bridge.health()
        self.server = DemoServer(self.flask).start()
        self.url = self.server.url

    @property
    def recovery(self) -> dict[str, Any]:
        recovery: dict[str, Any] = self.bridge.health()["recovery"]
        return recovery

    def wait_emitted(self, count: int) -> None:
        wait_for(lambda: self.bridge.emitted >= count, 30,
                 message=lambda: f"{count} emits by the bridge: {self.bridge.health()}")

    def close(self) -> None:
        self.bridge.stop()
        self.server.stop()


@pytest.fixture
def publisher(kafka_bootstrap: str, topic: str) -> Iterator[EventPublisher]:
    """A KAFKA-mode publisher to a fresh 3-partition topic (its relay in this process)."""
    create_topic(kafka_bootstrap, topic, 3)
    published = build_publisher(kafka_settings(kafka_bootstrap, topic))
    yield published
    published.close(5)


def order(publisher: EventPublisher, orderid: str, user: str = "alice") -> None:
    publisher.publish_order_event(user, "SBIN-EQ", "BUY", orderid, "live", quantity=1)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_client_recovers_from_the_topic_after_the_app_restarts(
        kafka_bootstrap, topic, publisher, transport):
    """Orders published while the client was away and the app restarted (its memory gone) come
    back from the topic on reconnect, in order, once each, before the status (recovered, count
    5) and the next live order; the restarted app read the topic once."""
    settings = kafka_settings(kafka_bootstrap, topic)
    first = KafkaApp(settings)
    client = RecoveringClient()
    try:
        assert client.connect(first.url, [transport])["reason"] == "no_offset"
        for n in range(3):
            order(publisher, f"A{n}")
        client.wait_for_value("orderid", "A2")
        client.disconnect()
        for n in range(5):
            order(publisher, f"B{n}")
        assert publisher.flush(20) == 0
        first.wait_emitted(8)
    finally:
        first.close()
    second = KafkaApp(settings)
    try:
        status = client.connect(second.url, [transport])
        assert (status["recovered"], status["count"]) == (True, 5), status
        order(publisher, "C0")
        client.wait_for_value("orderid", "C0")
        assert client.values("orderid") == ["A0", "A1", "A2", "B0", "B1", "B2", "B3", "B4",
                                            "C0"]
        assert client.dropped == 0
        partitions = {payload[AUTH_KEY].rsplit(":", 2)[1] for _, payload in client.events()}
        assert len(partitions) == 1  # one user: one partition, in offset order
        offsets = [int(payload[AUTH_KEY].rsplit(":", 1)[1]) for _, payload in client.events()]
        assert offsets == sorted(offsets)
        assert second.recovery["reads"] == 1 and second.recovery["recovered"] == 1
        client.disconnect()
    finally:
        second.close()


def test_a_client_moves_between_app_processes_and_keeps_its_place(kafka_bootstrap, topic,
                                                                   publisher):
    """Two app processes read the topic: a client that leaves one gets what it missed from the
    other; reconnecting to a process that has emitted less than it has seen, it is told it
    recovered, keeps its own offsets, and gets the next order once."""
    settings = kafka_settings(kafka_bootstrap, topic)
    gate = {"open": True}
    one, two = KafkaApp(settings), KafkaApp(settings, active=lambda: gate["open"])
    client = RecoveringClient()
    try:
        client.connect(one.url, ["polling"])
        order(publisher, "A0")
        client.wait_for_value("orderid", "A0")
        client.disconnect()
        order(publisher, "A1")
        order(publisher, "A2")
        assert publisher.flush(20) == 0
        two.wait_emitted(3)
        assert client.connect(two.url, ["polling"])["count"] == 2
        assert client.values("orderid") == ["A0", "A1", "A2"]

        client.disconnect()
        assert client.connect(one.url, ["polling"])["recovered"] is True
        gate["open"] = False  # process two falls behind: it emits nothing for a while
        order(publisher, "B0")
        client.wait_for_value("orderid", "B0")
        seen = str(client.cursor)
        client.disconnect()
        status = client.connect(two.url, ["polling"])
        assert (status["recovered"], status["count"]) == (True, 0), status
        assert status["offset"] == seen  # its own offsets, ahead of process two's
        gate["open"] = True
        order(publisher, "C0")
        client.wait_for_value("orderid", "C0")
        assert client.values("orderid") == ["A0", "A1", "A2", "B0", "C0"]
        client.disconnect()
    finally:
        one.close()
        two.close()


def test_a_gap_the_topic_no_longer_keeps_is_reported(kafka_bootstrap, topic, publisher):
    """When the records a client missed were deleted from the topic (retention) before it came
    back to a restarted app, it gets no event and recovered: false, reason too_old; live
    orders reach it after."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    settings = kafka_settings(kafka_bootstrap, topic)
    first = KafkaApp(settings)
    client = RecoveringClient()
    try:
        client.connect(first.url, ["polling"])
        order(publisher, "A0")
        client.wait_for_value("orderid", "A0")
        client.disconnect()
        for n in range(3):
            order(publisher, f"B{n}")
        assert publisher.flush(20) == 0
        first.wait_emitted(4)
    finally:
        first.close()
    [(partition, offset)] = [(p, o) for p, o in client.cursor.offsets.items() if o >= 0]
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.delete_records([TopicPartition(topic, partition, offset + 3)]).values():
        future.result(30)
    second = KafkaApp(settings)
    try:
        status = client.connect(second.url, ["polling"])
        assert (status["recovered"], status["count"], status["reason"]) == (False, 0, "too_old")
        order(publisher, "C0")
        client.wait_for_value("orderid", "C0")
        assert client.values("orderid") == ["A0", "C0"]
        client.disconnect()
    finally:
        second.close()


def test_more_missed_events_than_one_recovery_sends_is_reported(kafka_bootstrap, topic,
                                                                 publisher):
    """With ORDER_EVENT_SOCKETIO_RECOVERY_MAX_EVENTS=4, a client that missed six orders gets
    none of them and recovered: false, reason too_many (the page refetches instead)."""
    settings = kafka_settings(kafka_bootstrap, topic,
                              ORDER_EVENT_SOCKETIO_RECOVERY_MAX_EVENTS="4")
    app = KafkaApp(settings)
    client = RecoveringClient()
    try:
        client.connect(app.url, ["websocket"])
        client.disconnect()
        for n in range(6):
            order(publisher, f"B{n}")
        assert publisher.flush(20) == 0
        app.wait_emitted(6)
        status = client.connect(app.url, ["websocket"])
        assert (status["recovered"], status["count"], status["reason"]) == (False, 0,
                                                                           "too_many")
        assert client.values("orderid") == []
        client.disconnect()
    finally:
        app.close()


def test_in_user_scope_recovery_from_the_topic_gives_only_the_users_own_events(
        kafka_bootstrap, topic, publisher):
    """Scope user, after a restart: alice gets back her orders and her password_change (without
    the IP address and user agent), never bob's or carol's events of the same gap."""
    settings = kafka_settings(kafka_bootstrap, topic, ORDER_EVENT_SOCKETIO_SCOPE="user")
    first = KafkaApp(settings)
    alice = RecoveringClient({"user": "alice"})
    try:
        alice.connect(first.url, ["polling"])
        alice.disconnect()
        for n in range(3):
            for user in ("alice", "bob", "carol"):
                order(publisher, f"{user}-{n}", user)
        for user in ("alice", "bob"):
            publisher.publish_password_change(user, "success", "Password changed",
                                              ip_address="203.0.113.7", user_agent="curl/8")
        assert publisher.flush(20) == 0
        first.wait_emitted(11)
    finally:
        first.close()
    second = KafkaApp(settings)
    try:
        status = alice.connect(second.url, ["websocket"])
        assert (status["recovered"], status["count"]) == (True, 4), status
        assert alice.values("orderid") == ["alice-0", "alice-1", "alice-2"]
        [(_, change)] = alice.events("password_change")
        assert {k: v for k, v in change.items() if k != AUTH_KEY} == {
            "user": "alice", "status": "success", "message": "Password changed"}
        assert [name for name, _ in alice.events()] == ["order_event"] * 3 + ["password_change"]
        alice.disconnect()
    finally:
        second.close()


def test_recovery_reads_past_transaction_markers_and_skips_aborted_records(kafka_bootstrap,
                                                                          topic):
    """Records written by a transactional producer, one transaction aborted: the bridge emits
    only the committed ones live, and a client recovering them from the topic gets the same,
    in order, with the read finished (not timed out) despite the markers between them."""
    from confluent_kafka import Producer

    create_topic(kafka_bootstrap, topic, 1)
    producer = Producer({"bootstrap.servers": kafka_bootstrap,
                         "transactional.id": f"test-{uuid.uuid4().hex}"})
    producer.init_transactions(30)
    builder = EventPublisher(MemoryTransport())  # builds the envelopes only

    def transaction(orderids: list[str], commit: bool = True) -> None:
        producer.begin_transaction()
        for orderid in orderids:
            envelope = builder.build("order_event", "alice", {
                "symbol": "SBIN-EQ", "action": "BUY", "orderid": orderid, "mode": "live"})
            producer.produce(topic, envelope.value, envelope.key,
                             headers=envelope.headers())
        assert producer.flush(30) == 0  # in the log before the end: an aborted record stays
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)

    settings = kafka_settings(kafka_bootstrap, topic)
    first = KafkaApp(settings)
    live = RecoveringClient()
    away = RecoveringClient()
    try:
        live.connect(first.url, ["polling"])
        away.connect(first.url, ["polling"])
        away.disconnect()
        transaction(["T0", "T1"])
        transaction(["X0"], commit=False)
        transaction(["T2"])
        live.wait_for_value("orderid", "T2")
        first.wait_emitted(3)
        live.disconnect()
    finally:
        first.close()
    second = KafkaApp(settings)
    try:
        status = away.connect(second.url, ["polling"])
        assert (status["recovered"], status["count"]) == (True, 3), status
        assert away.values("orderid") == live.values("orderid") == ["T0", "T1", "T2"]
        assert away.values(AUTH_KEY) == live.values(AUTH_KEY)
        away.disconnect()
    finally:
        second.close()
        builder.close(1)
