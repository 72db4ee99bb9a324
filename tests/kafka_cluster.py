"""A 3-node Apache Kafka (KRaft) test cluster that the suite starts and owns.

Each node is a plain JVM process running ``kafka.Kafka`` as a combined controller + broker on
free loopback ports, with its own persistent log directory under the cluster's state directory.
The jars come from Maven (``tests/kafka/pom.xml``), copied once into a cache outside the
repository (``~/.cache/openalgo-events/kafka-<version>/``) and reused from there.

Every node has four listeners:

- ``CONTROLLER``: the KRaft quorum;
- ``PLAINTEXT``: clients and replication (``bootstrap_servers``);
- ``SASL_PLAINTEXT``: SCRAM-SHA-512 with the user ``SCRAM_USER`` (``sasl_bootstrap_servers``);
- ``PROXIED``: plaintext, advertised at a port that a test's TCP proxy listens on
  (``proxy_ports``), so a test can cut the connection between a client and the cluster.

The cluster's layout (ports, directories, pids) is kept in ``cluster.json`` in the state
directory, so that another process (pytest, after ``scripts/test`` started the cluster) can
load it and kill, pause or restart nodes.

Command line (``scripts/test`` uses it)::

    python -m tests.kafka_cluster resolve            # prints the classpath directory
    python -m tests.kafka_cluster start --dir DIR    # prints KAFKA_BOOTSTRAP_SERVERS=...
    python -m tests.kafka_cluster stop --dir DIR
    python -m tests.kafka_cluster status --dir DIR
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

KAFKA_VERSION = os.environ.get("OPENALGO_EVENTS_TEST_KAFKA_VERSION", "4.4.0")
POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"
SCRAM_USER = "openalgo-test"
SCRAM_PASSWORD = "scram-test-" + "password-7f3a"
NODE_COUNT = 3  # combined controller + broker nodes
# Controller-only nodes beside them: 5 voters, so that two brokers down still leave a controller
# majority (the partition leaders can then shrink their ISR, and producers get
# NOT_ENOUGH_REPLICAS as in a production cluster whose controllers run apart).
CONTROLLER_ONLY = 2
STATE_FILE = "cluster.json"
JVM_OPTIONS = [
    "-Xms96m", "-Xmx384m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
    "-XX:MaxDirectMemorySize=128m", "-Djava.awt.headless=true",
    "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
    "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
    "-Dorg.slf4j.simpleLogger.log.kafka.request.logger=warn",
    "-Dorg.slf4j.simpleLogger.log.state.change.logger=warn",
    "-Dorg.slf4j.simpleLogger.log.org.apache.kafka.clients=warn",
]


class ClusterError(RuntimeError):
    """The test cluster could not be resolved, formatted or started; the message says why."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "openalgo-events"


def default_state_dir() -> Path:
    """The state directory a developer's ``start`` and pytest share (one per checkout)."""
    checkout = hashlib.sha256(str(Path(__file__).resolve().parent.parent).encode()).hexdigest()
    return cache_root() / f"cluster-{checkout[:10]}"


def java_binary() -> str:
    java = os.environ.get("JAVA_HOME")
    candidate = str(Path(java) / "bin" / "java") if java else shutil.which("java")
    if not candidate or not Path(candidate).exists():
        raise ClusterError("no Java runtime found (need Java 17+ on PATH or JAVA_HOME)")
    return candidate


def resolve_jars(version: str = KAFKA_VERSION) -> Path:
    """Directory holding the Kafka broker's jars and their runtime dependencies.

    Copied from Maven the first time (``mvn dependency:copy-dependencies`` on
    ``tests/kafka/pom.xml``), then reused. Raises ClusterError when Maven is missing or fails.
    """
    target = cache_root() / f"kafka-{version}"
    if (target / ".complete").exists():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ClusterError("Maven (mvn) is not installed; it resolves the Kafka jars "
                           f"(org.apache.kafka:kafka_2.13:{version})")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    # Minutes on a bare machine (Maven downloads the broker and its dependencies): say so.
    print(f"resolving Kafka {version}'s jars with Maven into {target} (once; cached for "
          "later runs)", file=sys.stderr, flush=True)
    command = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
               f"-DoutputDirectory={partial}", f"-Dkafka.version={version}",
               "-DincludeScope=runtime"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0:
        raise ClusterError(f"mvn could not resolve Kafka {version}:\n{result.stdout[-3000:]}"
                           f"{result.stderr[-2000:]}")
    (partial / ".complete").write_text(version + "\n")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (bound together so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


@dataclass
class Node:
    """One combined controller + broker: its id, ports, directory and process id."""

    node_id: int
    controller_port: int
    broker_port: int
    sasl_port: int
    proxied_port: int
    proxy_port: int  # where a test's TCP proxy listens, advertised for the PROXIED listener
    directory: str
    pid: int | None = None
    broker: bool = True  # False: a controller-only node (no client listeners)

    @property
    def log_path(self) -> Path:
        return Path(self.directory) / "server.log"

    @property
    def config_path(self) -> Path:
        return Path(self.directory) / "server.properties"


# The layout the design asks of a production cluster, and what real clusters do. On every
# node, controllers included: in KRaft the active controller's value is the cluster's default
# for a topic's min.insync.replicas (a controller-only node left at Kafka's default of 1 made
# "two of three brokers down" accept writes whenever it was the active controller).
TOPIC_DEFAULTS: dict[str, object] = {
    "auto.create.topics.enable": "false",
    "default.replication.factor": 3,
    "min.insync.replicas": 2,
    "num.partitions": 1,
}

@dataclass
class KafkaCluster:
    """A 3-node KRaft cluster under ``state_dir``; see the module docstring.

    ``start()`` formats each node's storage the first time, starts every node that is not
    running and returns once metadata shows all brokers; ``stop()`` ends them (SIGTERM, then
    SIGKILL after a grace period). Node helpers take a node id (1-3).
    """

    state_dir: str
    version: str = KAFKA_VERSION
    cluster_id: str = ""
    nodes: list[Node] = field(default_factory=list)
    classpath_dir: str = ""

    # ----------------------------------------------------------------- layout and state
    @classmethod
    def create(cls, state_dir: Path | str, version: str = KAFKA_VERSION) -> KafkaCluster:
        """A new cluster layout (ports, directories) in ``state_dir``; nothing started yet."""
        state = Path(state_dir)
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir(parents=True)
        cluster_id = "-"
        while cluster_id.startswith("-"):  # the storage tool would read "-..." as an option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        total = NODE_COUNT + CONTROLLER_ONLY
        ports = free_ports(5 * total)
        nodes = []
        for i in range(total):
            c, b, s, p, x = ports[5 * i: 5 * i + 5]
            directory = state / f"node-{i + 1}"
            directory.mkdir()
            nodes.append(Node(i + 1, c, b, s, p, x, str(directory), broker=i < NODE_COUNT))
        cluster = cls(str(state), version, cluster_id, nodes)
        cluster.save()
        return cluster

    @classmethod
    def load(cls, state_dir: Path | str) -> KafkaCluster:
        """The cluster whose layout is saved in ``state_dir`` (ClusterError if none)."""
        path = Path(state_dir) / STATE_FILE
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ClusterError(f"no test cluster saved in {state_dir}: {exc}") from exc
        nodes = [Node(**node) for node in doc.pop("nodes")]
        return cls(nodes=nodes, **doc)

    def save(self) -> None:
        path = Path(self.state_dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    def node(self, node_id: int) -> Node:
        return self.nodes[node_id - 1]

    @property
    def broker_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.broker]

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{n.broker_port}" for n in self.broker_nodes)

    @property
    def sasl_bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{n.sasl_port}" for n in self.broker_nodes)

    @property
    def proxied_bootstrap_servers(self) -> str:
        """Bootstrap through the test's proxies (they must be listening on ``proxy_port``)."""
        return ",".join(f"127.0.0.1:{n.proxy_port}" for n in self.broker_nodes)

    # ----------------------------------------------------------------- configuration
    def _properties(self, node: Node) -> str:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        if not node.broker:
            return "".join(f"{key}={value}\n" for key, value in {
                "process.roles": "controller", "node.id": node.node_id,
                "controller.quorum.voters": voters,
                "listeners": f"CONTROLLER://127.0.0.1:{node.controller_port}",
                "listener.security.protocol.map": "CONTROLLER:PLAINTEXT",
                "controller.listener.names": "CONTROLLER",
                "log.dirs": str(Path(node.directory) / "data"),
                "broker.session.timeout.ms": 4000,
                "controller.quorum.election.timeout.ms": 1000,
                "controller.quorum.fetch.timeout.ms": 2000,
                "num.io.threads": 1, "num.network.threads": 1, "background.threads": 1,
                **TOPIC_DEFAULTS,
            }.items())
        settings = {
            "process.roles": "broker,controller",
            "node.id": node.node_id,
            "controller.quorum.voters": voters,
            "listeners": (f"PLAINTEXT://127.0.0.1:{node.broker_port},"
                          f"CONTROLLER://127.0.0.1:{node.controller_port},"
                          f"SASL_PLAINTEXT://127.0.0.1:{node.sasl_port},"
                          f"PROXIED://127.0.0.1:{node.proxied_port}"),
            "advertised.listeners": (f"PLAINTEXT://127.0.0.1:{node.broker_port},"
                                     f"SASL_PLAINTEXT://127.0.0.1:{node.sasl_port},"
                                     f"PROXIED://127.0.0.1:{node.proxy_port}"),
            "listener.security.protocol.map": ("PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,"
                                               "SASL_PLAINTEXT:SASL_PLAINTEXT,"
                                               "PROXIED:PLAINTEXT"),
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "log.dirs": str(Path(node.directory) / "data"),
            **TOPIC_DEFAULTS,
            "offsets.topic.replication.factor": 3,
            "offsets.topic.num.partitions": 5,
            "transaction.state.log.replication.factor": 3,
            "transaction.state.log.min.isr": 2,
            "transaction.state.log.num.partitions": 5,
            "unclean.leader.election.enable": "false",
            # Fast failure detection for tests (defaults are tuned for production networks).
            "group.initial.rebalance.delay.ms": 0,
            "broker.heartbeat.interval.ms": 500,
            "broker.session.timeout.ms": 4000,
            "controller.quorum.election.timeout.ms": 1000,
            "controller.quorum.fetch.timeout.ms": 2000,
            "replica.lag.time.max.ms": 8000,
            "controlled.shutdown.enable": "true",
            # Expire idle producer ids within a second once a test lowers
            # producer.id.expiration.ms (a dynamic config): the idempotent producer's
            # lost-state errors can then be provoked.
            "producer.id.expiration.check.interval.ms": 1000,
            # Small footprint: 2 cores shared with the suite.
            "num.network.threads": 2,
            "num.io.threads": 2,
            "background.threads": 2,
            "num.replica.fetchers": 1,
            "num.recovery.threads.per.data.dir": 1,
            "log.cleaner.threads": 1,
            "log.cleaner.dedupe.buffer.size": 4 * 1024 * 1024,
            "log.segment.bytes": 64 * 1024 * 1024,
        }
        return "".join(f"{key}={value}\n" for key, value in settings.items())

    def _java(self, main: str, *args: str, heap: str = "-Xmx384m") -> list[str]:
        classpath = str(Path(self.classpath_dir) / "*")
        options = [heap if o.startswith("-Xmx") else o for o in JVM_OPTIONS]
        return [java_binary(), *options, "-cp", classpath, main, *args]

    def _format(self, nodes: list[Node]) -> None:
        """Format the storage of each unformatted node, in parallel (one JVM each).

        Every node gets the same bootstrap metadata, the SCRAM user included: whichever
        controller is elected first writes it into the cluster's metadata log."""
        scram = f"SCRAM-SHA-512=[name={SCRAM_USER},password={SCRAM_PASSWORD}]"
        running = []
        for node in nodes:
            if (Path(node.directory) / "data" / "meta.properties").exists():
                continue
            node.config_path.write_text(self._properties(node))
            command = self._java("kafka.tools.StorageTool", "format", "-t", self.cluster_id,
                                 "-c", str(node.config_path), "--add-scram", scram,
                                 "--ignore-formatted", heap="-Xmx160m")
            running.append((node, subprocess.Popen(command, stdout=subprocess.PIPE,
                                                   stderr=subprocess.STDOUT, text=True)))
        failures = []
        try:
            for node, process in running:
                output, _ = process.communicate(timeout=120)
                if process.returncode != 0:
                    failures.append(f"node {node.node_id}:\n"
                                    f"{output.replace(SCRAM_PASSWORD, '***')[-2000:]}")
        except BaseException:  # interrupted or timed out: leave no formatter running
            for _, process in running:
                process.kill()
                process.wait()
            raise
        if failures:
            raise ClusterError("formatting failed: " + "\n".join(failures))

    # ----------------------------------------------------------------- processes
    def running(self, node_id: int) -> bool:
        """True while the node's process exists (paused counts as running)."""
        pid = self.node(node_id).pid
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        with contextlib.suppress(OSError):  # a zombie of ours: reap it, it is gone
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"

    def start(self, timeout: float = 120.0) -> KafkaCluster:
        """Resolve the jars, format storage where needed, start every stopped node, and return
        once metadata shows every broker (ClusterError after ``timeout`` seconds).

        The readiness check needs confluent-kafka: without it, this fails before anything
        starts. A start that fails or is interrupted stops the nodes it started."""
        require_client()
        self.classpath_dir = str(resolve_jars(self.version))
        self._format(self.nodes)
        spawned = []
        try:
            for node in self.nodes:
                if not self.running(node.node_id):
                    self._spawn(node)
                    spawned.append(node.node_id)
            self.save()
            self.wait_ready(timeout)
        except BaseException:
            for node_id in spawned:  # only ours: a node that already ran is left running
                self.stop_node(node_id, timeout=10)
            self.save()
            raise
        return self

    def _spawn(self, node: Node) -> None:
        node.config_path.write_text(self._properties(node))
        with open(node.log_path, "ab") as log:
            log.write(f"---- starting node {node.node_id} at {time.ctime()}\n".encode())
            process = subprocess.Popen(
                self._java("kafka.Kafka", str(node.config_path),
                           heap="-Xmx384m" if node.broker else "-Xmx160m"), stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                cwd=node.directory)
        node.pid = process.pid
        # Popen's object is dropped: the pid is the handle (another process may manage it).
        process.returncode = 0  # keep Popen.__del__ from warning about a running child

    def start_node(self, node_id: int, wait: bool = True, timeout: float = 60.0) -> None:
        """Start one stopped node (its storage is kept); wait until metadata lists it."""
        node = self.node(node_id)
        if not self.running(node_id):
            self._spawn(node)
            self.save()
        if wait:
            self.wait_ready(timeout, brokers={node_id})

    def signal(self, node_id: int, signum: int) -> None:
        pid = self.node(node_id).pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def kill(self, node_id: int) -> None:
        """SIGKILL one node and wait for its process to be gone."""
        self.signal(node_id, signal.SIGCONT)
        self.signal(node_id, signal.SIGKILL)
        self._wait_gone(node_id, 30)

    def pause(self, node_id: int) -> None:
        """SIGSTOP one node (it keeps its sockets open and answers nothing)."""
        self.signal(node_id, signal.SIGSTOP)

    def resume(self, node_id: int) -> None:
        self.signal(node_id, signal.SIGCONT)

    def stop_node(self, node_id: int, timeout: float = 30.0) -> None:
        """SIGTERM one node (controlled shutdown), SIGKILL if it has not exited in time."""
        self.signal(node_id, signal.SIGCONT)
        self.signal(node_id, signal.SIGTERM)
        try:
            self._wait_gone(node_id, timeout)
        except ClusterError:
            self.kill(node_id)

    def restart_node(self, node_id: int, timeout: float = 60.0) -> None:
        self.stop_node(node_id)
        self.start_node(node_id, timeout=timeout)

    def restart(self, timeout: float = 120.0) -> None:
        """Stop every node, then start them all again."""
        self.stop()
        self.start(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every node: SIGTERM all at once, SIGKILL whatever remains after ``timeout``."""
        for node in self.nodes:
            self.signal(node.node_id, signal.SIGCONT)
            self.signal(node.node_id, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            try:
                self._wait_gone(node.node_id, max(0.1, deadline - time.monotonic()))
            except ClusterError:
                self.kill(node.node_id)
            node.pid = None
        self.save()

    def _wait_gone(self, node_id: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.running(node_id):
            if time.monotonic() > deadline:
                raise ClusterError(f"node {node_id} did not exit within {timeout}s")
            time.sleep(0.05)

    # ----------------------------------------------------------------- readiness, metadata
    def _admin(self, bootstrap: str | None = None) -> Any:
        from confluent_kafka.admin import AdminClient

        return AdminClient({"bootstrap.servers": bootstrap or self.bootstrap_servers,
                            "socket.connection.setup.timeout.ms": 2000,
                            "reconnect.backoff.max.ms": 500, "log_level": 0})

    def brokers(self, timeout: float = 2.0) -> set[int]:
        """Ids of the brokers the cluster's metadata lists now (empty if none answers)."""
        from confluent_kafka import KafkaException  # a missing client is an error, not "none"

        running = [n for n in self.broker_nodes if self.running(n.node_id)]
        if not running:
            return set()
        bootstrap = ",".join(f"127.0.0.1:{n.broker_port}" for n in running)
        try:
            return set(self._admin(bootstrap).list_topics(timeout=timeout).brokers)
        except KafkaException:
            return set()

    def wait_ready(self, timeout: float = 120.0, brokers: set[int] | None = None) -> None:
        """Poll metadata until it lists ``brokers`` (default: every node)."""
        wanted = brokers or {n.node_id for n in self.broker_nodes}
        deadline = time.monotonic() + timeout
        while not wanted <= self.brokers():
            for node_id in wanted:
                if not self.running(node_id):
                    raise ClusterError(f"node {node_id} exited; see {self.node(node_id).log_path}:"
                                       f"\n{self.tail(node_id)}")
            if time.monotonic() > deadline:
                raise ClusterError(f"brokers {sorted(wanted)} not all in metadata after "
                                   f"{timeout}s (see {self.state_dir}/node-*/server.log)")
            time.sleep(0.1)

    def tail(self, node_id: int, lines: int = 30) -> str:
        try:
            text = self.node(node_id).log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def leader(self, topic: str, partition: int, timeout: float = 10.0) -> int:
        """Node id leading ``topic``'s ``partition`` now (ClusterError if none within timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            running = [n for n in self.broker_nodes if self.running(n.node_id)]
            bootstrap = ",".join(f"127.0.0.1:{n.broker_port}" for n in running)
            with contextlib.suppress(Exception):
                meta = self._admin(bootstrap).list_topics(topic, timeout=2)
                leader = meta.topics[topic].partitions[partition].leader
                if leader >= 0:
                    return int(leader)
            if time.monotonic() > deadline:
                raise ClusterError(f"no leader for {topic}[{partition}] within {timeout}s")
            time.sleep(0.1)

    def wait_in_sync(self, topic: str, timeout: float = 60.0) -> None:
        """Poll until every partition of ``topic`` has all its replicas in sync."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):
                meta = self._admin().list_topics(topic, timeout=2).topics[topic]
                if meta.partitions and all(
                        len(p.isrs) == len(p.replicas) and p.leader >= 0
                        for p in meta.partitions.values()):
                    return
            if time.monotonic() > deadline:
                raise ClusterError(f"{topic} not fully in sync within {timeout}s")
            time.sleep(0.2)

    def heal(self, timeout: float = 120.0) -> None:
        """Bring the cluster back to every node running and listed (after a test broke it)."""
        for node in self.nodes:
            self.resume(node.node_id)
        for node in self.nodes:
            if not self.running(node.node_id):
                self._spawn(node)
        self.save()
        self.wait_ready(timeout)

    def alive(self) -> bool:
        """True when every node's process runs and metadata lists every broker."""
        return (all(self.running(n.node_id) for n in self.nodes)
                and self.brokers() == {n.node_id for n in self.broker_nodes})


def require_client() -> None:
    """ClusterError unless this interpreter imports confluent-kafka, which every readiness
    check uses (an interpreter outside the suite's virtualenv often lacks it)."""
    try:
        import confluent_kafka.admin  # noqa: F401
    except ImportError as exc:
        raise ClusterError(
            f"{sys.executable} cannot import confluent_kafka ({exc}), which the cluster's "
            "readiness check needs; run this with the suite's virtualenv "
            "(.venv/bin/python -m tests.kafka_cluster ...) or pip install confluent-kafka"
        ) from exc


def java_and_maven_missing() -> str | None:
    """Why the cluster cannot run here (no Java, or no Maven and no cached jars), or None."""
    try:
        java_binary()
    except ClusterError as exc:
        return str(exc)
    if shutil.which("mvn") is None and not (cache_root() / f"kafka-{KAFKA_VERSION}"
                                            / ".complete").exists():
        return "Maven (mvn) is not installed and no Kafka jars are cached"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.kafka_cluster",
                                     description="The test suite's 3-node Kafka cluster.")
    parser.add_argument("command", choices=["resolve", "start", "stop", "status", "check"])
    parser.add_argument("--dir", default=str(default_state_dir()),
                        help="state directory (ports, logs, data); default: %(default)s")
    parser.add_argument("--fresh", action="store_true",
                        help="start: wipe the state directory and format new storage")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            reason = java_and_maven_missing()
            if reason:
                print(reason, file=sys.stderr)
                return 1
            return 0
        if args.command == "resolve":
            print(resolve_jars())
            return 0
        state = Path(args.dir)
        if args.command == "start":
            try:
                cluster = KafkaCluster.load(state)
                if args.fresh:
                    cluster.stop()
                    raise ClusterError("fresh")
            except ClusterError:
                cluster = KafkaCluster.create(state)
            started = time.monotonic()
            cluster.start()
            print(f"KAFKA_BOOTSTRAP_SERVERS={cluster.bootstrap_servers}")
            print(f"OPENALGO_EVENTS_TEST_CLUSTER={cluster.state_dir}")
            ready = time.monotonic() - started
            print(f"# {len(cluster.broker_nodes)} brokers ready in {ready:.1f}s",
                  file=sys.stderr)
            return 0
        cluster = KafkaCluster.load(state)
        if args.command == "stop":
            cluster.stop()
            return 0
        for node in cluster.nodes:
            print(f"node {node.node_id} ({'broker' if node.broker else 'controller'}): "
                  f"pid {node.pid} "
                  f"{'running' if cluster.running(node.node_id) else 'stopped'} "
                  f"broker 127.0.0.1:{node.broker_port}")
        print(f"metadata lists brokers {sorted(cluster.brokers())}")
        return 0
    except ClusterError as exc:
        print(f"kafka_cluster: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # start() has stopped the nodes it started
        print("kafka_cluster: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
