"""``openalgo-events relay`` and ``python -m openalgo_events.relay``: the relay in the foreground.

Registered on the CLI group by ``register``, so the CLI module needs one line for it. With
``--keep`` the process is the relay's keeper (``keeper``) instead.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from ..config import Settings
from ..errors import ConfigError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [relay %(process)s] %(message)s"


def run(spool: str | None, port: int | None, exit_when_idle: bool, wait_for_lock: bool,
        env_file: str | None = ".env", keep: bool = False, watch_parent: bool = False) -> int:
    """Configure logging, build the relay (or its keeper) from the environment, run it until
    SIGTERM; the exit status (``relay.process``). Raises ``ConfigError``."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=LOG_FORMAT)
    settings = Settings.from_env(env_file=env_file)
    if spool:
        settings = settings.with_spool(spool)
    if not settings.bootstrap_servers:
        raise ConfigError(["the relay needs KAFKA_BOOTSTRAP_SERVERS (the brokers to send to); "
                           "set it in the environment or the .env file"])
    if settings.spool_path == ":memory:":
        raise ConfigError(["KAFKA_SPOOL_PATH=:memory: keeps the relay inside the publishing "
                           "process; a relay process needs a spool directory"])
    if keep:
        from .keeper import Keeper

        args = ["--spool", settings.spool_location]
        args += ["--port", str(port)] if port is not None else []
        args += ["--exit-when-idle"] if exit_when_idle else []
        args += ["--wait-for-lock"] if wait_for_lock else []
        os.environ["KAFKA_SPOOL_PATH"] = settings.spool_location
        return Keeper(settings.spool_location, args, watch_parent=watch_parent,
                      for_publisher=exit_when_idle).run()
    from .process import Relay

    relay = Relay(settings, exit_when_idle=exit_when_idle, wait_for_lock=wait_for_lock,
                  port=port)
    relay.install_signals()
    return relay.run()


def finish(code: int) -> None:
    """Exit now, without waiting for librdkafka's client threads (the ledger is written):
    a relay stopping against brokers that are down must not spend its grace period there."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@click.command("relay")
@click.option("--spool", default=None, metavar="PATH",
              help="The spool directory (default: KAFKA_SPOOL_PATH, or the default one per "
                   "cluster and topic).")
@click.option("--port", default=None, type=click.IntRange(0, 65535),
              help="Loopback port for /health and /metrics (default: "
                   "OPENALGO_EVENTS_RELAY_PORT, else any free one, shown in health).")
@click.option("--exit-when-idle", is_flag=True,
              help="Exit once no publisher is left and nothing is pending.")
@click.option("--wait-for-lock", is_flag=True,
              help="If another relay holds the spool, wait for it to go instead of exiting.")
@click.pass_context
def relay(ctx: click.Context, spool: str | None, port: int | None, exit_when_idle: bool,
          wait_for_lock: bool) -> None:
    """Send the spooled events of every publishing process to Kafka, until SIGTERM.

    One relay per spool; publishers start one themselves when none runs, and the gunicorn hook
    supervises one. Run it yourself under systemd or as a sidecar (docs/operations.md). Exit
    status: 0 stopped, 3 another relay holds the spool, 78 the spool or the settings cannot be
    used (the message says why).

    \b
    Example:
      KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 openalgo-events relay --port 9464
    """
    env_file = (ctx.find_root().obj or {}).get("env_file", ".env")
    finish(run(spool, port, exit_when_idle, wait_for_lock, env_file))


def register(group: click.Group) -> None:
    group.add_command(relay)
