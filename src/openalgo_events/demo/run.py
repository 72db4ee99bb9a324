"""``openalgo-events demo``: serve the reference app in the foreground until Ctrl-C.

Settings come from the environment (and ``.env``). ``with_broker`` starts the bundled Tansu
broker and points ``KAFKA_BOOTSTRAP_SERVERS`` at it, in BOTH mode unless ``ORDER_EVENT_MODE``
says otherwise, so the page keeps its feed and every event also lands on Kafka.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
from collections.abc import Callable
from typing import Any

from ..config import Settings
from ..devbroker import DevBroker
from .app import DEMO_API_KEY, create_app, demo_state
from .server import DemoServer

log = logging.getLogger("openalgo_events.demo")


def _configured(name: str, env_file: str = ".env") -> bool:
    """Whether ``name`` is set in the environment or in ``.env``."""
    if name in os.environ:
        return True
    if not os.path.exists(env_file):
        return False
    from dotenv import dotenv_values

    return bool(dotenv_values(env_file).get(name))


def use_dev_broker(bootstrap_servers: str, env_file: str = ".env") -> None:
    """Point this process's settings at a local broker that keeps nothing."""
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap_servers
    if not _configured("ORDER_EVENT_MODE", env_file):
        os.environ["ORDER_EVENT_MODE"] = "BOTH"
    if not _configured("KAFKA_SPOOL_PATH", env_file):
        # The broker forgets everything when it stops; so may the spool that feeds it.
        spool_dir = tempfile.mkdtemp(prefix="openalgo-events-demo-")
        os.environ["KAFKA_SPOOL_PATH"] = os.path.join(spool_dir, "spool.db")


def _interrupt_on_sigterm() -> None:
    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def run(host: str, port: int, with_broker: bool = False, *, env_file: str = ".env",
        echo: Callable[[str], None] = print) -> int:
    """Serve until interrupted; returns how many events were left undelivered at shutdown."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per poll otherwise
    _interrupt_on_sigterm()
    broker = DevBroker().start() if with_broker else None
    try:
        if broker is not None:
            use_dev_broker(broker.bootstrap_servers, env_file)
        settings = Settings.from_env(env_file=env_file)
        app, _ = create_app(settings)
        state = demo_state(app)
        try:
            server = DemoServer(app, host, port)
        except BaseException:
            state.close(settings.close_timeout_seconds)
            raise
        kafka = (f", Kafka {settings.bootstrap_servers} topic {settings.order_events_topic}"
                 if settings.mode.uses_kafka else "")
        echo(f"openalgo-events reference app: {server.url}  (mode {settings.mode.value}{kafka}; "
             f"API key {DEMO_API_KEY})")
        if broker is not None:
            echo(f"Tansu broker on {broker.bootstrap_servers} (memory only; stops with the app)")
        echo("Ctrl-C stops it.")
        try:
            server.serve_forever()  # werkzeug ends it quietly on KeyboardInterrupt
        finally:
            echo("stopping: delivering what is still pending…")
            server.stop()
            left = state.close(settings.close_timeout_seconds)
        return left
    finally:
        if broker is not None:
            broker.stop()
