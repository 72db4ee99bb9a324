"""Shared fixtures: a real Kafka cluster (the suite's own 3-node KRaft cluster, or the one in
KAFKA_BOOTSTRAP_SERVERS) and helpers.

Every broker test uses its own topic and consumer group; waits poll with a deadline.

Which broker the session uses, in order:
1. ``KAFKA_BOOTSTRAP_SERVERS`` when set (an external cluster, or the one ``scripts/test`` started;
   ``OPENALGO_EVENTS_TEST_CLUSTER`` then names its state directory so tests can kill nodes);
2. a cluster already running in the checkout's default state directory
   (``python -m tests.kafka_cluster start`` once, then run pytest as often as you like);
3. a new cluster started for this session and stopped at its end;
4. where Java or Maven is missing: the bundled Tansu broker, with a loud warning (an error
   when ``CI`` is set: CI must test against Apache Kafka).
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator

import pytest

from openalgo_events.devbroker import DevBroker
from tests import kafka_cluster as kc
from tests.support import create_topic


class _Clusters:
    """The session's cluster: loaded, reused or started once, stopped at the end if ours."""

    def __init__(self) -> None:
        self.cluster: kc.KafkaCluster | None = None
        self.owned: kc.KafkaCluster | None = None
        self.tansu: DevBroker | None = None

    def get(self) -> kc.KafkaCluster:
        """The controllable cluster (loads, reuses or starts one; ClusterError if impossible)."""
        if self.cluster is not None:
            return self.cluster
        named = os.environ.get("OPENALGO_EVENTS_TEST_CLUSTER")
        if named:
            self.cluster = kc.KafkaCluster.load(named)
            return self.cluster
        try:
            shared = kc.KafkaCluster.load(kc.default_state_dir())
            if shared.alive():
                self.cluster = shared
                return shared
        except kc.ClusterError:
            pass
        reason = kc.java_and_maven_missing()
        if reason:
            raise kc.ClusterError(f"cannot start the test cluster: {reason}")
        state = kc.cache_root() / f"pytest-{os.getpid()}"
        self.owned = self.cluster = kc.KafkaCluster.create(state).start()
        return self.cluster

    def close(self) -> None:
        if self.owned is not None:
            self.owned.stop()
            shutil.rmtree(self.owned.state_dir, ignore_errors=True)
        if self.tansu is not None:
            self.tansu.stop()


@pytest.fixture(scope="session")
def _clusters() -> Iterator[_Clusters]:
    clusters = _Clusters()
    try:
        yield clusters
    finally:
        clusters.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(_clusters: _Clusters) -> str:
    """Bootstrap servers of a real Kafka cluster for the whole test session."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        return external
    reason = kc.java_and_maven_missing()
    if reason is None:
        return _clusters.get().bootstrap_servers
    if os.environ.get("CI"):
        pytest.fail(f"CI must test against Apache Kafka, but {reason}")
    print(f"\n*** WARNING: {reason}: broker tests run against the bundled Tansu broker, "
          "which is not Apache Kafka (no replication, memory only, topics auto-create) ***",
          file=sys.stderr)
    _clusters.tansu = DevBroker().start()
    return _clusters.tansu.bootstrap_servers


@pytest.fixture(scope="session")
def kafka_cluster(_clusters: _Clusters) -> kc.KafkaCluster:
    """The session's controllable cluster (nodes to kill, pause, restart), started if needed."""
    try:
        return _clusters.get()
    except kc.ClusterError as exc:
        pytest.fail(f"this test needs the suite's own Kafka cluster: {exc}")


@pytest.fixture
def cluster(kafka_cluster: kc.KafkaCluster) -> Iterator[kc.KafkaCluster]:
    """The controllable cluster for a test that breaks it; every node is running again after."""
    kafka_cluster.heal()
    try:
        yield kafka_cluster
    finally:
        kafka_cluster.heal()


@pytest.fixture(autouse=True)
def _no_relay_outlives_its_test(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A relay a test started (or a publisher started for it) ends with the test: one with
    events for a broker the test stopped would otherwise wait for it for the whole session."""
    yield
    from tests.integration.relay_support import kill_relays_under

    kill_relays_under(str(tmp_path_factory.getbasetemp()))


@pytest.fixture
def topic() -> str:
    """A fresh topic name for one test (not created: auto-creation is off on the cluster)."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def created_topic(kafka_bootstrap: str, topic: str) -> str:
    """``topic``, created with 5 partitions and the cluster's replication (3 on the cluster)."""
    create_topic(kafka_bootstrap, topic, partitions=5)
    return topic


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> object:
    """A clean environment for CLI tests (no KAFKA_*/ORDER_EVENT_* variables, cwd without a
    .env); returns a function that sets variables for the rest of the test."""
    for name in list(os.environ):
        if name.startswith(("KAFKA_", "ORDER_EVENT_", "OPENALGO_EVENTS_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]

    def set_env(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_env
