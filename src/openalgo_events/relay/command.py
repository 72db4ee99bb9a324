"""``openalgo-events relay``: the relay in the foreground (systemd, a container sidecar).

Registered on the CLI group by ``register``, so the CLI module needs one line for it.
"""

from __future__ import annotations

import logging
import sys

import click

from ..config import Settings
from ..errors import ConfigError


def run(spool: str | None, port: int, exit_when_idle: bool, wait_for_lock: bool,
        env_file: str | None = ".env", exit_with_parent: bool = False) -> int:
    """Configure logging, build the relay from the environment, run it until SIGTERM."""
    from .process import Relay

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s [relay %(process)s] %(message)s")
    settings = Settings.from_env(env_file=env_file)
    if spool:
        settings = Settings.from_env({**settings.to_env(), "KAFKA_SPOOL_PATH": spool})
    if not settings.bootstrap_servers:
        raise ConfigError(["the relay needs KAFKA_BOOTSTRAP_SERVERS"])
    relay = Relay(settings, exit_when_idle=exit_when_idle, wait_for_lock=wait_for_lock,
                  port=port, exit_with_parent=exit_with_parent)
    relay.install_signals()
    return relay.run()


@click.command("relay")
@click.option("--spool", default=None, metavar="PATH",
              help="The spool (default: KAFKA_SPOOL_PATH).")
@click.option("--port", default=0, show_default=True, type=click.IntRange(0, 65535),
              help="Loopback port for /health and /metrics (0: any free one, written to the "
                   "status file).")
@click.option("--exit-when-idle", is_flag=True,
              help="Exit once no publisher is left and nothing is pending.")
@click.option("--wait-for-lock", is_flag=True,
              help="If another relay holds the spool, wait for it to go instead of exiting.")
@click.pass_context
def relay(ctx: click.Context, spool: str | None, port: int, exit_when_idle: bool,
          wait_for_lock: bool) -> None:
    """Send the spooled events of every publishing process to Kafka, until SIGTERM.

    One relay per spool; publishers start one themselves when none runs, and the gunicorn hook
    supervises one. Run it yourself under systemd or as a sidecar (docs/operations.md).

    \b
    Example:
      KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 openalgo-events relay --port 9464
    """
    env_file = (ctx.find_root().obj or {}).get("env_file", ".env")
    ctx.exit(run(spool, port, exit_when_idle, wait_for_lock, env_file))


def register(group: click.Group) -> None:
    group.add_command(relay)
