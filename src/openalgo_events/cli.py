"""The ``openalgo-events`` command line: operators' tools."""

from __future__ import annotations

import signal
import time

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "OPENALGO_EVENTS"})
@click.version_option(__version__, prog_name="openalgo-events")
def main() -> None:
    """Order events from a Flask-SocketIO trading backend to Socket.IO and Kafka."""


@main.command("dev-broker")
@click.option("--port", type=int, default=9092, show_default=True, help="Port to listen on.")
def dev_broker(port: int) -> None:
    """Run the bundled Tansu broker on 127.0.0.1:PORT (memory only) until interrupted.

    \b
    Example:
      openalgo-events dev-broker --port 9092 &
      export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092
    """
    from .devbroker import DevBroker

    broker = DevBroker(port).start()
    click.echo(f"Tansu broker listening on {broker.bootstrap_servers} (memory storage; "
               "Ctrl-C stops it and loses its data)")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while broker.process is not None and broker.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
