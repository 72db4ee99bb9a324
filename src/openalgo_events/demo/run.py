"""``openalgo-events demo``: serve the reference app in the foreground until Ctrl-C.

Settings come from the environment (and ``.env``). ``with_broker`` starts the bundled Tansu
broker and points ``KAFKA_BOOTSTRAP_SERVERS`` at it, in BOTH mode unless ``ORDER_EVENT_MODE``
says otherwise, so the page keeps its feed and every event also lands on Kafka. With a broker,
the order topic is created first with ``openalgo-events topics create``'s layout (never left
to auto-creation). Unless ``ORDER_EVENT_ADMIN_TOKEN`` is set, the demo's mode switch uses the
token ``demo-admin-token``, printed at start.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
from collections.abc import Callable
from typing import Any

from ..config import Settings
from ..devbroker import DevBroker, port_free
from ..errors import OpenAlgoEventsError
from .app import DEMO_API_KEY, create_app, demo_state
from .server import DemoServer

log = logging.getLogger("openalgo_events.demo")
DEMO_PORT = 8765  # not 5000: that is OpenAlgo's own port
DEMO_ADMIN_TOKEN = "demo-admin-token"


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
        os.environ["KAFKA_SPOOL_PATH"] = os.path.join(spool_dir, "spool")


def use_demo_admin_token(env_file: str = ".env") -> str | None:
    """Turn the mode endpoint on with the demo's token unless one is configured; returns the
    token to print (None when it is the operator's own, which is never printed)."""
    if _configured("ORDER_EVENT_ADMIN_TOKEN", env_file):
        return None
    os.environ["ORDER_EVENT_ADMIN_TOKEN"] = DEMO_ADMIN_TOKEN
    return DEMO_ADMIN_TOKEN


def create_order_topic(settings: Settings, echo: Callable[[str], None]) -> None:
    """Create the order topic as ``topics create`` does; an unreachable broker is reported
    and the demo starts anyway (its events wait in the spool)."""
    from ..ops.topics import create_topics, describe_line, planned_topics

    [plan] = [p for p in planned_topics(settings) if p.name == settings.order_events_topic]
    try:
        [result] = create_topics(settings, [plan], 10.0, lambda text: log.info("%s", text))
    except OpenAlgoEventsError as exc:
        echo(f"warning: could not create topic {plan.name}: {exc}")
        return
    echo(f"topic {describe_line(result)}")  # as the broker reports it


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
    if port and not port_free(port, host):
        raise OpenAlgoEventsError(
            f"port {port} on {host} is in use by another program; stop it, or choose another "
            "port with --port or OPENALGO_EVENTS_DEMO_PORT")
    broker = DevBroker().start() if with_broker else None
    try:
        if broker is not None:
            use_dev_broker(broker.bootstrap_servers, env_file)
        token = use_demo_admin_token(env_file)
        settings = Settings.from_env(env_file=env_file)
        if settings.bootstrap_servers:
            create_order_topic(settings, echo)
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
        echo(f"health {server.url}/openalgo-events/health, metrics "
             f"{server.url}/openalgo-events/metrics")
        who = f"ORDER_EVENT_ADMIN_TOKEN={token} " if token else ""
        if settings.bootstrap_servers:
            echo(f"switch the mode: {who}openalgo-events mode KAFKA --url {server.url}")
        else:
            echo("switch the mode: KAFKA and BOTH need a broker (openalgo-events demo "
                 "--with-broker)")
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
