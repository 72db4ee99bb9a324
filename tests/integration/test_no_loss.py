"""No event lost: Kafka nodes killed, frozen, restarted or cut off; process crashes; a broker
absent at start.

The outage tests run on the suite's own 3-node Apache Kafka cluster (replication 3,
``min.insync.replicas=2``), which keeps what it acknowledged: they allow no loss at all. Each
publishes at 100 events/s over 10 users, breaks the cluster, repairs it, and asserts that every
published event arrived, that each user's events arrived in publish order, and, the relay
running exactly-once (the default, and what the cluster supports), that a read_committed
consumer saw no event twice. Each prints its duration, the duplicates (0) and the recovery
time: from the cluster's return to an empty spool.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from openalgo_events import KafkaEventPublisher, Settings
from openalgo_events.devbroker import DevBroker, free_port
from openalgo_events.spool import Spool
from openalgo_events.spool import format as fmt
from tests.integration.relay_support import relay_log, relay_processes
from tests.kafka_cluster import KafkaCluster
from tests.support import TcpProxy, TopicCollector, create_topic, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]

RATE = 100  # events per second, as the scenarios ask
USERS = 10


def settings(tmp_path, **env: str) -> Settings:
    return Settings.from_env({"KAFKA_SPOOL_PATH": str(tmp_path / "spool"),
                              "KAFKA_STALL_TIMEOUT_SECONDS": "5", **env})


class Load:
    """Publishes order events at ``RATE`` per second over ``USERS`` users on a thread, recording
    each user's event ids in publish order, until ``stop()``."""

    def __init__(self, publisher: KafkaEventPublisher) -> None:
        self.publisher = publisher
        self.published: dict[str, list[str]] = defaultdict(list)
        self.count = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        try:
            while not self._stop.is_set():
                delay = start + self.count / RATE - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                user = f"user{self.count % USERS}"
                envelope = self.publisher.publish_order_event(user, "SBIN", "BUY",
                                                              str(self.count), "live")
                self.published[user].append(envelope.event_id)
                self.count += 1
        except BaseException as exc:  # surfaced by stop(): a publish must never raise here
            self.error = exc

    def run_for(self, seconds: float) -> None:
        """Keep publishing for ``seconds`` (the scenario's duration, not a wait for a result)."""
        self._stop.wait(seconds)
        assert self.error is None, f"publish raised during the outage: {self.error!r}"

    def halt(self) -> None:
        """Stop publishing without checking (cleanup after a failure)."""
        self._stop.set()
        self._thread.join(10)

    def stop(self) -> set[str]:
        self._stop.set()
        self._thread.join(10)
        assert self.error is None, f"publish raised: {self.error!r}"
        return {e for ids in self.published.values() for e in ids}


def first_appearances(collector: TopicCollector) -> dict[str, list[str]]:
    """Per user, event ids in the order they first appear in their partition."""
    seen: set[str] = set()
    order: dict[str, list[str]] = defaultdict(list)
    for _partition, _offset, key, value, _ in sorted(collector.messages):
        event_id = json.loads(value)["event_id"]
        if event_id not in seen:
            seen.add(event_id)
            order[key.decode()].append(event_id)
    return order


@contextmanager
def outage_run(name: str, cluster: KafkaCluster, tmp_path: Any, topic: str,
               bootstrap: str | None = None, **env: str) -> Iterator[dict[str, Any]]:
    """Create ``topic``, start a publisher on ``bootstrap`` (default: the cluster) with load and
    a collector; the body breaks and repairs the cluster and sets ``run["back"]`` (monotonic
    time the cluster was whole again). After the body: the spool must drain, every published
    event arrive, per-user order hold; the figures are printed and left in ``run``."""
    create_topic(cluster.bootstrap_servers, topic, partitions=5)
    # Every scenario assumes 3 replicas, all in sync, before it breaks anything (a broker the
    # previous test restarted may still be registering when the topic is created).
    cluster.wait_in_sync(topic, 60)
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap_servers,
                         "log_level": 2})  # alive through the outage: no line per refusal
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions.values()
    replicas = {len(p.replicas) for p in partitions}
    assert replicas == {3}, f"{topic} has replication {replicas}, not 3"
    (described,) = admin.describe_configs([ConfigResource("topic", topic)]).values()
    min_isr = described.result(10)["min.insync.replicas"].value
    assert min_isr == "2", f"{topic} has min.insync.replicas={min_isr}, not the cluster's 2"
    publisher = KafkaEventPublisher(bootstrap or cluster.bootstrap_servers, topic,
                                    settings=settings(tmp_path, **env))
    collector = TopicCollector(cluster.bootstrap_servers, topic)
    started = time.monotonic()
    load = Load(publisher)
    run: dict[str, Any] = {"publisher": publisher, "load": load, "collector": collector,
                           "back": None}
    try:
        yield run
        back = run["back"]
        assert back is not None, "the scenario must record when the cluster was back"

        def backlog_drained() -> bool:
            # Nothing pending is older than the cluster's return: the outage's backlog is out
            # (events published since keep flowing; the spool is never still under load).
            age = publisher.health()["oldest_pending_age_seconds"]
            return age is None or age < time.monotonic() - back
        wait_for(backlog_drained, 120, step=0.02, message="the outage's backlog to drain")
        recovery = time.monotonic() - back
        load.run_for(3)  # some events after the repair too
        all_ids = load.stop()
        wait_for(lambda: publisher.health()["spool_depth"] == 0, 60, step=0.05,
                 message="the spool to drain")
        wait_for(lambda: all_ids <= set(collector.event_ids()), 60,
                 message="every published event at the consumer")
        duration = time.monotonic() - started
        received = collector.event_ids()
        missing = all_ids - set(received)
        assert not missing
        order = first_appearances(collector)
        for user, ids in load.published.items():
            assert order[user] == ids, f"{user}'s events first arrived out of publish order"
        health = publisher.health()
        run.update(duplicates=len(received) - len(set(received)), recovery=recovery,
                   duration=duration, published=len(all_ids),
                   rebuilds=health["producer_rebuilds"])
        assert health["guarantee"] == "exactly-once", health
        assert run["duplicates"] == 0, (
            f"{run['duplicates']} duplicates read committed under exactly-once")
        print(f"\n{name}: {len(all_ids)} published, 0 missing, {run['duplicates']} duplicates, "
              f"recovery (cluster back -> outage backlog delivered) {recovery:.1f}s, "
              f"{run['rebuilds']} producer rebuilds, test {duration:.1f}s")
    finally:
        load.halt()
        collector.stop()
        publisher.close(5)


def busiest_partition(collector: TopicCollector) -> int:
    wait_for(lambda: collector.messages, 30, message="the first events at the consumer")
    counts: dict[int, int] = defaultdict(int)
    for partition, *_ in collector.messages:
        counts[partition] += 1
    return max(counts, key=lambda p: counts[p])


def test_leader_of_the_busiest_partition_killed_and_restarted_loses_nothing(cluster, tmp_path,
                                                                            topic):
    """SIGKILL of the leader of the busiest partition at 100 events/s, restarted 20 s later:
    zero events missing and each user's events first arrive in publish order."""
    with outage_run("leader SIGKILL 20 s", cluster, tmp_path, topic) as run:
        run["load"].run_for(8)
        partition = busiest_partition(run["collector"])
        leader = cluster.leader(topic, partition)
        cluster.kill(leader)
        run["load"].run_for(20)
        cluster.start_node(leader)
        run["back"] = time.monotonic()
        assert cluster.leader(topic, partition) in {1, 2, 3}


def test_leader_of_the_busiest_partition_frozen_for_15_s_loses_nothing(cluster, tmp_path,
                                                                       topic):
    """The leader of the busiest partition frozen (SIGSTOP: alive to the network, answering
    nothing) for 15 s at 100 events/s, then woken: zero events missing, per-user order kept,
    nothing twice read committed."""
    with outage_run("leader SIGSTOP 15 s", cluster, tmp_path, topic) as run:
        run["load"].run_for(5)
        leader = cluster.leader(topic, busiest_partition(run["collector"]))
        cluster.pause(leader)
        try:
            run["load"].run_for(15)
        finally:
            cluster.resume(leader)
        run["back"] = time.monotonic()
        cluster.wait_in_sync(topic, 60)


def test_all_three_nodes_killed_for_30_s_lose_nothing(cluster, tmp_path, topic):
    """SIGKILL of every node (brokers and controllers) for 30 s under load, then a restart:
    zero events missing, per-user order kept."""
    with outage_run("all nodes SIGKILL 30 s", cluster, tmp_path, topic) as run:
        run["load"].run_for(5)
        for node in cluster.nodes:
            cluster.kill(node.node_id)
        run["load"].run_for(30)
        cluster.heal()
        run["back"] = time.monotonic()


def test_rolling_restart_under_load_loses_nothing(cluster, tmp_path, topic):
    """Each broker in turn stopped (SIGTERM) and started again, waiting for the topic to be in
    sync before the next, under load: zero events missing, per-user order kept."""
    with outage_run("rolling restart", cluster, tmp_path, topic) as run:
        run["load"].run_for(3)
        for node in cluster.broker_nodes:
            cluster.restart_node(node.node_id)
            cluster.wait_in_sync(topic, 60)
        run["back"] = time.monotonic()


def test_two_of_three_brokers_down_waits_in_the_spool_as_not_enough_replicas(cluster, tmp_path,
                                                                             topic):
    """With two of three brokers down, min.insync.replicas=2 refuses writes: events wait in the
    spool, health is degraded naming NOT_ENOUGH_REPLICAS, and everything is delivered once a
    broker returns."""
    # librdkafka retries NOT_ENOUGH_REPLICAS until message.timeout.ms and then reports only
    # "Message timed out"; with a finite number of retries the report carries the broker's
    # error, which is what an operator needs to see (measured with Kafka 4.4, librdkafka 2.x).
    with outage_run("two of three down", cluster, tmp_path, topic,
                    KAFKA_LIBRDKAFKA_MESSAGE_TIMEOUT_MS="10000",
                    KAFKA_LIBRDKAFKA_RETRIES="3") as run:
        publisher = run["publisher"]
        run["load"].run_for(3)
        down = [n.node_id for n in cluster.broker_nodes][:2]
        for node_id in down:
            cluster.kill(node_id)
        health = wait_for(lambda: (h := publisher.health()) and not h["healthy"]
                          and "NOT_ENOUGH_REPLICAS" in str(h["problem"]) and h, 120,
                          step=0.2, message=lambda: "health degraded with NOT_ENOUGH_REPLICAS"
                          f" (publishing: {run['load'].error or 'ok'}; {publisher.health()})")
        assert health["spool_depth"] > 0
        cluster.start_node(down[0])
        run["back"] = time.monotonic()
        wait_for(lambda: publisher.health()["healthy"], 60, message="healthy again")


def test_connection_cut_and_restored_loses_nothing(cluster, tmp_path, topic):
    """The network between publisher and every broker cut for 20 s (proxies reset connections,
    then go silent) and restored: zero events missing, per-user order kept."""
    proxies = [TcpProxy(n.proxy_port, n.proxied_port) for n in cluster.broker_nodes]
    try:
        with outage_run("connection cut 20 s", cluster, tmp_path, topic,
                        bootstrap=cluster.proxied_bootstrap_servers) as run:
            run["load"].run_for(5)
            for proxy in proxies:
                proxy.cut()
            run["load"].run_for(10)
            for proxy in proxies:
                proxy.restore()
                proxy.cut(blackhole=True)
            run["load"].run_for(10)
            for proxy in proxies:
                proxy.restore()
            run["back"] = time.monotonic()
    finally:
        for proxy in proxies:
            proxy.close()


def test_recovery_is_prompt_when_the_cluster_returns_during_a_long_rebuild_backoff(cluster,
                                                                                  tmp_path, topic):
    """The producer rebuild backoff (0.5 s doubling to 30 s) ends as soon as a metadata probe
    sees the cluster again: cut off until the sixth rebuild (a 16 s backoff) and restored at
    once, the outage's backlog is delivered within 8 s, not after the rest of the backoff."""
    proxies = [TcpProxy(n.proxy_port, n.proxied_port) for n in cluster.broker_nodes]
    try:
        # a 1 s stall timeout: six rebuilds (backoffs 0.5+1+2+4+8 s) within about 25 s
        with outage_run("cut off through a 16 s backoff", cluster, tmp_path, topic,
                        bootstrap=cluster.proxied_bootstrap_servers,
                        KAFKA_STALL_TIMEOUT_SECONDS="1") as run:
            publisher = run["publisher"]
            run["load"].run_for(2)
            before = publisher.health()["producer_rebuilds"]
            for proxy in proxies:
                proxy.cut()
            wait_for(lambda: publisher.health()["producer_rebuilds"] >= before + 6, 90,
                     step=0.05, message="the sixth producer rebuild (its backoff is 16 s)")
            for proxy in proxies:
                proxy.restore()
            run["back"] = time.monotonic()
        assert run["recovery"] < 8.0, f"recovery took {run['recovery']:.1f}s"
    finally:
        for proxy in proxies:
            proxy.close()


def acknowledged(spool_path: str) -> set[str]:
    """Event ids the relay has acknowledged so far: every journal record (live writers' and the
    trail's) at or below its writer's acknowledged seq in the ledger.

    The ledger is written within ``LEDGER_EVERY`` (0.05 s) of an acknowledgement; never compare
    it with the moment a broker was killed, only with a moment no broker could acknowledge."""
    with Spool(spool_path) as spool:
        return {record.meta[fmt.EVENT_ID] for record in spool.trail(since=0.0)}


def test_replaced_broker_without_producer_state_loses_nothing_it_did_not_acknowledge(
        tmp_path, topic):
    """A broker that keeps nothing (Tansu) dies under load and a fresh one takes its address, as
    after a failover that loses producer state: the stalled idempotent producer is rebuilt,
    every event the dead broker had not acknowledged arrives, in per-user order.

    What the dead broker acknowledged is what the relay's ledger holds acknowledged just before
    the *new* broker starts: between the kill and the restart no broker could acknowledge
    anything, so a ledger write after the kill (it lags the acknowledgement) still counts as the
    dead broker's. Using the kill moment instead expected events the broker had lost (issue
    14)."""
    port = free_port()
    broker = DevBroker(port).start()
    spool_path = str(tmp_path / "spool")
    publisher = KafkaEventPublisher(broker.bootstrap_servers, topic, settings=settings(tmp_path))
    collectors = [TopicCollector(broker.bootstrap_servers, topic)]
    load = Load(publisher)
    try:
        load.run_for(10)
        broker.stop()
        collectors[0].stop()  # it would otherwise read the next broker at this address
        load.run_for(15)
        acknowledged_by_the_dead = acknowledged(spool_path)  # no broker can acknowledge now
        broker = DevBroker(port).start()
        collectors.append(TopicCollector(broker.bootstrap_servers, topic))
        load.run_for(5)
        all_ids = load.stop()
        wait_for(lambda: publisher.flush(0) == 0, 90, message="spool to drain")
        lost_with_broker = acknowledged_by_the_dead - set(collectors[0].event_ids())
        expected = all_ids - lost_with_broker - set(collectors[0].event_ids())
        wait_for(lambda: expected <= set(collectors[1].event_ids()), 60,
                 message=lambda: f"every event the dead broker had not acknowledged "
                 f"({len(expected - set(collectors[1].event_ids()))} of {len(expected)} missing, "
                 f"{len(lost_with_broker)} lost with it, "
                 f"{len(collectors[1].event_ids())} read from the new broker)")
        rebuilds = publisher.health()["producer_rebuilds"]
    finally:
        load.halt()
        for collector in collectors:
            collector.stop()
        publisher.close(5)
        broker.stop()
    received = set(collectors[0].event_ids()) | set(collectors[1].event_ids())
    assert all_ids - received == lost_with_broker
    seen: set[str] = set()
    order: dict[str, list[str]] = defaultdict(list)
    for collector in collectors:  # brokers in the order they ran
        for _partition, _offset, key, value, _ in sorted(collector.messages):
            event_id = json.loads(value)["event_id"]
            if event_id not in seen:
                seen.add(event_id)
                order[key.decode()].append(event_id)
    for user, ids in load.published.items():
        assert order[user] == [e for e in ids if e not in lost_with_broker]
    assert rebuilds >= 1  # the stalled idempotent producer was rebuilt
    print(f"\nreplaced Tansu broker: {len(all_ids)} published, {len(lost_with_broker)} lost "
          f"with the memory-only broker, 0 others missing, {rebuilds} producer rebuilds")


PUBLISHER = textwrap.dedent("""
    import sys
    from openalgo_events import KafkaEventPublisher, Settings
    bootstrap, topic, spool, log_path, count = sys.argv[1:6]
    settings = Settings.from_env({"KAFKA_SPOOL_PATH": spool, "KAFKA_STALL_TIMEOUT_SECONDS": "5"})
    publisher = KafkaEventPublisher(bootstrap, topic, settings=settings)
    with open(log_path, "a", buffering=1) as log:
        for i in range(int(count)):
            env = publisher.publish_order_event(f"user{i % 10}", "SBIN", "BUY", str(i), "live")
            log.write(env.event_id + "\\n")  # written only after publish() returned
    print("published", flush=True)
    sys.stdin.read()  # wait to be killed
    left = publisher.flush(30)  # close() never waits: flush does
    publisher.close()
    print("left", left, flush=True)
""")


def run_publisher(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", PUBLISHER, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})


def test_kill_9_with_events_pending_loses_nothing(tmp_path, topic):
    """A publisher killed with -9 while its events are pending (broker frozen) sends them all
    after it is started again."""
    with DevBroker() as broker:
        collector = TopicCollector(broker.bootstrap_servers, topic)
        spool, log_path = str(tmp_path / "spool"), str(tmp_path / "ids.txt")
        args = [broker.bootstrap_servers, topic, spool, log_path]
        try:
            os.kill(broker.process.pid, signal.SIGSTOP)  # events stay pending
            first = run_publisher([*args, "2000"])
            assert first.stdout.readline().strip() == "published"
            # kill -9 of the publisher and of the relay it started, whatever it read by then:
            # what it did not commit is still in the dead publisher's journal
            relays = wait_for(lambda: relay_processes(spool), 10, message="the relay")
            first.kill()
            first.communicate(timeout=10)
            for pid in relays:
                os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not relay_processes(spool), 10, message="the relay gone")
            os.kill(broker.process.pid, signal.SIGCONT)
            second = run_publisher([*args, "100"])
            assert second.stdout.readline().strip() == "published"
            out, _ = second.communicate("", timeout=60)
            assert out.split() == ["left", "0"]
            with open(log_path) as f:
                published = [line.strip() for line in f if line.strip()]
            wait_for(lambda: set(published) <= set(collector.event_ids()), 60,
                     message="every event id published before the crash")
        finally:
            collector.stop()
    assert len(published) == 2100


@contextmanager
def broker_appears(port: int, topic: str, ids: set[str]) -> Iterator[DevBroker]:
    """Start a broker on ``port``; enter once every event in ``ids`` is on ``topic``."""
    with DevBroker(port) as broker:
        collector = TopicCollector(broker.bootstrap_servers, topic)
        try:
            wait_for(lambda: ids <= set(collector.event_ids()), 60, message="delivery")
        finally:
            collector.stop()
        yield broker


def test_broker_absent_at_start_up(tmp_path, topic):
    """With no broker at start-up the publisher starts, accepts events, reports itself unhealthy,
    and delivers everything once a broker appears."""
    port = free_port()
    publisher = KafkaEventPublisher(f"127.0.0.1:{port}", topic, settings=settings(tmp_path))
    try:
        ids = {publisher.publish_order_event("alice", "SBIN", "BUY", str(i), "live").event_id
               for i in range(50)}
        health = wait_for(lambda: (h := publisher.health()) and h["broker_reachable"] is False
                          and h, 15, message="health to report the broker unreachable")
        assert health["healthy"] is False and health["spool_depth"] == 50
        with broker_appears(port, topic, ids):
            wait_for(lambda: publisher.health()["healthy"], 15, message="healthy again")
    finally:
        publisher.close(1)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_health_counts_the_bytes_of_events_waiting_for_an_absent_broker(tmp_path, topic,
                                                                        guarantee):
    """Events waiting for an absent broker take their journal bytes: health's pending bytes are
    what the journals hold past the ledger, over KAFKA_SPOOL_MAX_BYTES too, whether they were
    handed to the producer (at-least-once) or wait for the transaction coordinator to answer
    before any is sent (exactly-once)."""
    port = free_port()
    publisher = KafkaEventPublisher(f"127.0.0.1:{port}", topic, settings=settings(
        tmp_path, KAFKA_SPOOL_MAX_BYTES="20000", KAFKA_DELIVERY_GUARANTEE=guarantee))
    in_flight = 200 if guarantee == "at_least_once" else 0
    try:
        for i in range(200):
            publisher.publish_order_event("alice", "SBIN", "BUY", str(i), "live")
        health = wait_for(lambda: (h := publisher.health()) and h["broker_reachable"] is False
                          and h["in_flight"] == in_flight and h["spool_depth"] == 200 and h,
                          15, message=lambda: f"200 events waiting ({publisher.health()})")
        with Spool(str(tmp_path / "spool")) as spool:
            waiting = spool.pending()
        assert waiting.depth == 200 and waiting.bytes > 20000
        assert health["spool_pending_bytes"] == waiting.bytes
        assert health["spool_over_limit"] is True
    finally:
        publisher.close(1)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_spool_full_sheds_low_priority_and_delivers_every_critical_event(tmp_path, topic,
                                                                         guarantee):
    """With the broker down and the spool over its limit, master-contract events are shed
    (counted) while every order event is kept and delivered when the broker returns. The relay
    sheds as it reads the journals: at-least-once reads into the producer during the outage,
    exactly-once once the transaction coordinator answers (nothing is read before), so there
    the events are shed as the broker returns, before any is sent."""
    port = free_port()
    publisher = KafkaEventPublisher(f"127.0.0.1:{port}", topic, settings=settings(
        tmp_path, KAFKA_SPOOL_MAX_BYTES="20000", KAFKA_DELIVERY_GUARANTEE=guarantee))
    try:
        orders = {publisher.publish_order_event("alice", "SBIN", "BUY", str(i), "live").event_id
                  for i in range(200)}
        masters = {publisher.publish_master_contract_download("angel", "success", "done").event_id
                   for _ in range(20)}
        if guarantee == "at_least_once":
            wait_for(lambda: publisher.health()["spool_shed"] == 20, 10,
                     message="20 events shed")
        with broker_appears(port, topic, orders) as broker:
            wait_for(lambda: publisher.health()["spool_shed"] == 20, 10,
                     message="20 events shed")
            wait_for(lambda: publisher.health()["spool_depth"] == 0, 15,
                     message="the spool to drain")
            collector = TopicCollector(broker.bootstrap_servers, topic)
            try:
                received = wait_for(lambda: (ids := set(collector.event_ids())) >= orders
                                    and ids, 30, message="the orders read back")
            finally:
                collector.stop()
            assert not masters & received, "a shed event reached the topic"
    finally:
        publisher.close(1)


def test_a_failed_delivery_is_logged_and_resent(tmp_path, topic):
    """A delivery report with an error (here librdkafka's message timeout, the broker being
    absent) is logged by the relay with the error and shown in health; the event stays in the
    journal and arrives once a broker appears. At-least-once: exactly-once sends nothing before
    the transaction coordinator answers, so no record can time out there."""
    port = free_port()
    publisher = KafkaEventPublisher(f"127.0.0.1:{port}", topic, settings=settings(
        tmp_path, KAFKA_LIBRDKAFKA_MESSAGE_TIMEOUT_MS="1000",
        KAFKA_DELIVERY_GUARANTEE="at_least_once"))
    spool = str(tmp_path / "spool")
    try:
        event_id = publisher.publish_order_event("alice", "SBIN", "BUY", "1", "live").event_id
        failure = wait_for(lambda: [text for level, text in relay_log(spool)
                                    if level == "WARNING" and "delivery of 1 records failed"
                                    in text], 15, message="the failure to be logged")
        assert "Message timed out" in failure[0] and "resent" in failure[0]
        # health shows it within the relay's status interval (50 ms), not at the same instant
        health = wait_for(lambda: (h := publisher.health()) and not h["healthy"] and h, 2,
                          message=lambda: f"health unhealthy ({publisher.health()})")
        assert health["spool_depth"] == 1
        assert "timed out" in str(health["last_error"])
        with broker_appears(port, topic, {event_id}):
            wait_for(lambda: publisher.flush(0) == 0, 15, message="the event acknowledged")
    finally:
        publisher.close(1)
