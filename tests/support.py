"""Helpers for broker tests: deadline waits, topic creation, reading a topic without a group."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, step: float = 0.02,
             message: str | Callable[[], str] = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``
    (``message`` may be a function, called then, to describe the state at the failure)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for "
                                 f"{message() if callable(message) else message}")
        time.sleep(step)


@contextlib.contextmanager
def mounted_tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """``mount`` made and mounted as a tmpfs of ``size`` (mount's ``size=``, e.g. ``3m``),
    private to its owner, unmounted at the end. Needs root (callers skip without it)."""
    import subprocess

    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=700", "tmpfs", str(mount)],
                   check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def create_topic(bootstrap: str, name: str, partitions: int = 1,
                 configs: dict[str, str] | None = None, timeout: float = 30.0) -> None:
    """Create ``name`` with ``partitions`` partitions, replicated on up to 3 brokers, and return
    once every partition has a leader (a real cluster answers CreateTopics before that)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    brokers = len(admin.list_topics(timeout=10).brokers)
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions,
                                            replication_factor=max(1, min(3, brokers)),
                                            config=configs or {})])
    for future in futures.values():
        future.result(timeout)

    def leaders_elected() -> bool:
        topic = admin.list_topics(name, timeout=5).topics[name]
        return (topic.error is None and len(topic.partitions) == partitions
                and all(p.leader >= 0 for p in topic.partitions.values()))

    wait_for(leaders_elected, timeout, step=0.05, message=f"leaders of {name}")


def ensure_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    """Create ``name`` unless it exists (a topic a component writes to, e.g. a dead-letter
    topic: the cluster does not auto-create topics)."""
    from confluent_kafka.admin import AdminClient

    topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
    if name not in topics:
        create_topic(bootstrap, name, partitions)


def read_topic(bootstrap: str, name: str, count: int, timeout: float = 30.0) -> list[Any]:
    """Read ``count`` messages from every partition of ``name`` (no consumer group: assign)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{uuid.uuid4().hex}",
                         "enable.auto.commit": False,
                         "isolation.level": "read_committed"})  # what consumers are told to use
    try:
        metadata = wait_for(lambda: consumer.list_topics(name, timeout=5).topics[name].partitions
                            or None, timeout, message=f"topic {name}")
        consumer.assign([TopicPartition(name, p, OFFSET_BEGINNING) for p in metadata])
        messages: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(messages) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                messages.append(msg)
        return messages
    finally:
        consumer.close()


def envelope_of(msg: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(msg.value())
    return doc


class TopicCollector:
    """Reads every partition of a topic from the beginning on a background thread, recording
    (partition, offset, key, value, headers) until stopped."""

    def __init__(self, bootstrap: str, name: str) -> None:
        import threading

        self.bootstrap, self.name = bootstrap, name
        self.messages: list[tuple[int, int, bytes, bytes, list[Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": uuid.uuid4().hex,
                             "enable.auto.commit": False, "fetch.wait.max.ms": 10,
                             "isolation.level": "read_committed",
                             "topic.metadata.refresh.interval.ms": 1000,
                             "log_level": 2})  # outage tests: no line per refused connect
        assigned: set[int] = set()
        next_check = 0.0
        try:
            while not self._stop.is_set():
                if time.monotonic() >= next_check:  # new partitions appear as topics auto-create
                    next_check = time.monotonic() + 1.0
                    try:
                        parts = consumer.list_topics(self.name, timeout=1).topics[self.name]
                        new = set(parts.partitions) - assigned
                    except Exception:
                        new = set()
                    if new:
                        assigned |= new
                        consumer.assign([TopicPartition(self.name, p, OFFSET_BEGINNING)
                                         for p in sorted(assigned)])
                msg = consumer.poll(0.05)
                if msg is not None and msg.error() is None:
                    self.messages.append((msg.partition(), msg.offset(), msg.key(), msg.value(),
                                          msg.headers() or []))
        finally:
            consumer.close()

    def event_ids(self) -> list[str]:
        return [json.loads(value)["event_id"] for _, _, _, value, _ in self.messages]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


class TcpProxy:
    """A loopback TCP proxy ``127.0.0.1:listen_port`` -> ``127.0.0.1:target_port`` that a test
    can cut and restore, to break the network between a client and one broker.

    ``cut()`` resets every open connection and refuses new ones; ``cut(blackhole=True)`` keeps
    connections open and accepts new ones but forwards nothing (a silent network, as when a
    cable is pulled), so the client only notices through its own timeouts. ``restore()`` forwards
    again (blackholed connections are then reset: their bytes were dropped).
    """

    def __init__(self, listen_port: int, target_port: int) -> None:
        import threading

        self.listen_port, self.target_port = listen_port, target_port
        self._lock = threading.Lock()
        self._conns: list[Any] = []
        self._listener: Any = None
        self._blackhole = False
        self._closed = False
        self.connections = 0
        self._listen()

    def _listen(self) -> None:
        import socket
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.listen_port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: Any) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed (cut or close)
            if listener is not self._listener or self._closed:
                # accepted by a listener cut meanwhile (close() does not end a blocked
                # accept()): a cut link lets nothing through
                self._reset(client)
                return
            if self._blackhole:
                with self._lock:
                    self._conns.append(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), 2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
                self.connections += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: Any, dst: Any) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while self._blackhole and not self._closed:
                    time.sleep(0.05)  # hold the bytes: nothing crosses while blackholed
                if self._closed:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._reset(src)
            self._reset(dst)

    @staticmethod
    def _reset(sock: Any) -> None:
        import socket
        import struct

        try:  # RST rather than FIN: the peer sees the connection broken, as in a real cut
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        except OSError:
            pass

    def _stop_listening(self) -> None:
        """Close the listener, waking its accept() (a close alone leaves a blocked accept()
        accepting one more connection: a cut that let a client through)."""
        import socket

        listener, self._listener = self._listener, None
        if listener is None:
            return
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()

    def cut(self, blackhole: bool = False) -> None:
        """Break the link: reset connections and refuse new ones, or (``blackhole``) go silent."""
        if blackhole:
            self._blackhole = True
            return
        self._stop_listening()
        with self._lock:
            conns, self._conns = self._conns, []
        for sock in conns:
            self._reset(sock)

    def restore(self) -> None:
        """Forward again, on the same port."""
        if self._blackhole:
            self._blackhole = False
            with self._lock:
                conns, self._conns = self._conns, []
            for sock in conns:
                self._reset(sock)
            return
        self._listen()

    def close(self) -> None:
        self._closed = True
        self._blackhole = False
        self._stop_listening()
        with self._lock:
            conns, self._conns = self._conns, []
        for sock in conns:
            self._reset(sock)


def processes_naming(*texts: str) -> list[int]:
    """Pids of the processes whose command line contains every one of ``texts`` (given a test
    cluster's state directory: its JVMs, and the command that started them)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue  # it exited meanwhile
            if all(text in line for text in texts):
                found.append(int(entry.name))
    return found
