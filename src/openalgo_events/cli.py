"""The ``openalgo-events`` command line: operators' tools.

Commands only parse options and print; the work lives in ``openalgo_events.ops``. Expected
failures (bad configuration, unreachable broker, missing extra, missing spool) end as one line
on stderr with a distinct exit status, never a traceback, and never show a secret.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from . import __version__
from .config import Settings
from .errors import ConfigError, OpenAlgoEventsError
from .ops.when import When, format_when

EXIT_CONFIG = 1
EXIT_BROKER = 2


class _Failure(click.ClickException):
    """An expected error, shown as one ``openalgo-events: ...`` message on stderr."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click reads it per instance

    def show(self, file: Any = None) -> None:
        click.echo(f"openalgo-events: {self.format_message()}", err=True)


class _FriendlyGroup(click.Group):
    """Turns the package's own errors, raised by any command, into ``_Failure``."""

    def invoke(self, ctx: click.Context) -> Any:
        from .ops.broker import BrokerUnreachableError

        try:
            return super().invoke(ctx)
        except BrokerUnreachableError as exc:
            raise _Failure(str(exc), EXIT_BROKER) from exc
        except ConfigError as exc:
            raise _Failure(str(exc), EXIT_CONFIG) from exc
        except OpenAlgoEventsError as exc:
            raise _Failure(str(exc), 1) from exc


@click.group(cls=_FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"],
                                                   "auto_envvar_prefix": "OPENALGO_EVENTS"})
@click.version_option(__version__, prog_name="openalgo-events")
@click.option("--env-file", default=".env", show_default=True, metavar="PATH",
              help="Read variables from this file too (set variables win).")
@click.pass_context
def main(ctx: click.Context, env_file: str) -> None:
    """Order events from a Flask-SocketIO trading backend to Socket.IO and Kafka.

    Kafka settings come from the KAFKA_* / ORDER_EVENT_* variables (and .env); every option
    can also be set as OPENALGO_EVENTS_<COMMAND>_<OPTION>.

    \b
    Examples:
      openalgo-events check                 # is the configuration valid, is Kafka reachable?
      openalgo-events topics create         # create the topics as the design specifies
      openalgo-events tail --user alice     # follow the order topic live
      openalgo-events replay --since 2h --user alice --dry-run
    """
    ctx.obj = {"env_file": env_file}


def _settings(ctx: click.Context) -> Settings:
    """The validated settings (``ConfigError`` becomes exit status 1 with the problems)."""
    env_file = (ctx.find_root().obj or {}).get("env_file", ".env")
    return Settings.from_env(env_file=env_file)


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


# -- check ----------------------------------------------------------------------------------
@main.command()
@click.option("--kafka", "force_kafka", is_flag=True,
              help="Test the broker even when ORDER_EVENT_MODE is SOCKETIO.")
@click.option("--timeout", default=5.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds to wait for the broker's answer.")
@click.pass_context
def check(ctx: click.Context, force_kafka: bool, timeout: float) -> None:
    """Validate the configuration, show it (secrets masked) and test Kafka.

    Exit status: 0 publishing would work, 1 the configuration is invalid, 2 no broker answered.

    \b
    Examples:
      openalgo-events check
      openalgo-events check --kafka --timeout 2
      KAFKA_BOOTSTRAP_SERVERS=kafka1:9092 ORDER_EVENT_MODE=BOTH openalgo-events check
    """
    from .ops.broker import probe
    from .ops.trail import spool_location_problem

    settings = _settings(ctx)
    click.echo("Configuration (secrets masked):")
    for name, value in settings.describe().items():
        click.echo(f"  {name:<32} {value}")
    for warning in settings.warnings:
        click.echo(f"warning: {warning}", err=True)
    if not (settings.mode.uses_kafka or force_kafka):
        click.echo("Mode SOCKETIO: Kafka is not used, nothing more to check "
                   "(--kafka tests the broker anyway).")
        return
    problem = spool_location_problem(settings.spool_path)
    if problem:
        raise ConfigError([problem])
    topics = [settings.order_events_topic]
    if settings.consumer_enabled:
        topics.append(settings.esb_events_topic)
    found = probe(settings, topics, timeout)
    click.echo(f"Kafka: {settings.bootstrap_servers} answered: {len(found.brokers)} broker(s) "
               f"{', '.join(found.brokers)}; cluster id {found.cluster_id}")
    for topic, partitions in found.partitions.items():
        if partitions is None:
            click.echo(f"Topic {topic}: does not exist yet; create it with 'openalgo-events "
                       "topics create' (or the broker auto-creates it on the first event)")
        else:
            click.echo(f"Topic {topic}: {partitions} partition(s)")
    click.echo("OK: publishing to Kafka would work.")


# -- topics ---------------------------------------------------------------------------------
@main.group()
def topics() -> None:
    """Create or describe the order, ESB and dead-letter topics."""


@topics.command("create")
@click.option("--partitions", default=5, show_default=True, type=click.IntRange(1))
@click.option("--replication-factor", default=3, show_default=True, type=click.IntRange(1),
              help="Capped to the number of brokers, with a warning.")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0.1))
@click.pass_context
def topics_create(ctx: click.Context, partitions: int, replication_factor: int,
                  timeout: float) -> None:
    """Create the topics as the design's Appendix A does; existing ones are left alone.

    The order topic keeps 7 days, the ESB topic 24 hours, the dead-letter topic 7 days; all
    snappy, max.message.bytes = ORDER_EVENT_MAX_MESSAGE_BYTES (1 MiB). Safe to run twice.

    \b
    Examples:
      openalgo-events topics create
      openalgo-events topics create --partitions 12
    """
    from .ops.topics import create_topics, planned_topics

    settings = _settings(ctx)
    plans = planned_topics(settings, partitions, replication_factor)
    warn = lambda text: click.echo(f"warning: {text}", err=True)  # noqa: E731
    for result in create_topics(settings, plans, timeout, warn):
        plan = next(p for p in plans if p.name == result.name)
        settings_text = ", ".join(f"{k}={v}" for k, v in plan.configs.items())
        click.echo(f"{result.name}: {result.outcome} ({plan.partitions} partitions, "
                   f"replication factor {result.replication_factor}, {settings_text})")


@topics.command("describe")
@click.argument("names", nargs=-1, metavar="[TOPIC]...")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0.1))
@click.pass_context
def topics_describe(ctx: click.Context, names: tuple[str, ...], timeout: float) -> None:
    """Show partitions, replicas and configs (default: the package's topics).

    \b
    Example:
      openalgo-events topics describe
      openalgo-events topics describe from_openalgo_order_events
    """
    from .ops.topics import describe_topics, planned_topics

    settings = _settings(ctx)
    wanted = list(names) or [plan.name for plan in planned_topics(settings)]
    for info in describe_topics(settings, wanted, timeout):
        if not info.exists:
            click.echo(f"{info.name}: does not exist (openalgo-events topics create)\n")
            continue
        click.echo(f"{info.name}: {len(info.partitions)} partition(s)")
        for part in info.partitions:
            click.echo(f"  partition {part.id:<3} leader {part.leader:<5} replicas "
                       f"{part.replicas}  in-sync {part.isrs}")
        click.echo("  configs:")
        for key, (value, default) in info.configs.items():
            shown = "(sensitive)" if value is None else value
            click.echo(f"    {key} = {shown}{'  (default)' if default else ''}")
        click.echo("")


# -- tail -----------------------------------------------------------------------------------
@main.command()
@click.option("--topic", help="Topic to follow (default: KAFKA_ORDER_EVENTS_TOPIC).")
@click.option("--event-type", "event_types", multiple=True, help="Only this type (repeatable).")
@click.option("--user", "users", multiple=True, help="Only this user id (repeatable).")
@click.option("--since", type=When(), help="Start at this time: ISO 8601 or e.g. 15m, 2h, 1d.")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest retained event.")
@click.option("--json", "as_json", is_flag=True, help="One envelope per line, for piping.")
@click.option("--max-messages", type=click.IntRange(1), help="Stop after this many.")
@click.option("--timeout", type=click.FloatRange(0.1), help="Stop after this many seconds.")
@click.pass_context
def tail(ctx: click.Context, topic: str | None, event_types: tuple[str, ...],
         users: tuple[str, ...], since: float | None, from_beginning: bool, as_json: bool,
         max_messages: int | None, timeout: float | None) -> None:
    """Follow the order topic live (no consumer group: nothing is committed).

    \b
    Examples:
      openalgo-events tail
      openalgo-events tail --user alice --event-type order_event --since 1h
      openalgo-events tail --json --from-beginning --timeout 10 | jq .data.orderid
    """
    from .ops.tail import TABLE_HEADER, TailFilter, follow, table_row

    settings = _settings(ctx)
    topic = topic or settings.order_events_topic
    start: str | float = since if since is not None else (
        "beginning" if from_beginning else "end")
    where = f"the {start}" if isinstance(start, str) else format_when(start)

    def ready(partitions: int) -> None:
        click.echo(f"following {topic} ({partitions} partitions) from {where}; Ctrl-C stops",
                   err=True)
        if not as_json:
            click.echo(TABLE_HEADER)

    only = TailFilter(frozenset(event_types), frozenset(users))
    try:
        for record in follow(settings, topic, start=start, timeout=timeout,
                             max_messages=max_messages, only=only, on_ready=ready):
            if as_json:
                if record.envelope is not None:
                    click.echo(json.dumps(record.envelope, ensure_ascii=False,
                                          separators=(",", ":")))
            else:
                click.echo(table_row(record))
    except KeyboardInterrupt:
        pass


# -- replay ---------------------------------------------------------------------------------
@main.command()
@click.option("--since", type=When(), required=True, help="Window start: ISO 8601 or e.g. 2h.")
@click.option("--until", type=When(), help="Window end (default: now).")
@click.option("--user", help="Only this user's events (default: everyone's).")
@click.option("--event-type", "event_types", multiple=True, help="Only this type (repeatable).")
@click.option("--topic", help="Send to this topic (default: KAFKA_ORDER_EVENTS_TOPIC).")
@click.option("--spool", "spool_path", help="Spool file (default: KAFKA_SPOOL_PATH).")
@click.option("--dry-run", is_flag=True, help="List what would be sent; send nothing.")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds to wait for the broker to confirm the copies.")
@click.pass_context
def replay(ctx: click.Context, since: float, until: float | None, user: str | None,
           event_types: tuple[str, ...], topic: str | None, spool_path: str | None,
           dry_run: bool, timeout: float) -> None:
    """Re-publish delivered events of a time window from the local trail.

    Works while the app runs (the spool is read, never locked). Copies keep their event_id
    and carry the header openalgo_replay: 1, so consumers that dedupe by event_id skip them.

    \b
    Examples:
      openalgo-events replay --since 2h --user alice --dry-run
      openalgo-events replay --since 2026-01-29T09:00:00Z --until 2026-01-29T10:00:00Z
    """
    from .ops.trail import Trail
    from .ops.trail import replay as replay_events

    settings = _settings(ctx)
    topic = topic or settings.order_events_topic
    until = until if until is not None else time.time()
    with Trail(spool_path or settings.spool_path) as trail:
        events = trail.delivered(since=since, until=until, user_id=user,
                                 event_types=event_types)
    window = f"{format_when(since)} .. {format_when(until)}"
    who = f"user {user}" if user else "all users"
    if dry_run:
        for event in events:
            click.echo(f"{format_when(event.created)}  {event.event_type:<24} "
                       f"{event.user_id:<14} {event.event_id}")
        click.echo(f"dry run: would re-publish {len(events)} event(s) of {who} from {window} "
                   f"to {topic}")
        return
    if not events:
        click.echo(f"nothing to replay: no delivered events of {who} in {window}")
        return
    with click.progressbar(length=len(events), label=f"re-publishing to {topic}",
                           file=sys.stderr) as bar:
        sent = replay_events(settings, events, topic, timeout=timeout, on_delivered=bar.update)
    click.echo(f"re-published {sent} event(s) of {who} from {window} to {topic}")


# -- spool ----------------------------------------------------------------------------------
@main.group()
def spool() -> None:
    """Inspect the local spool (read-only, safe while the app runs)."""


@spool.command("status")
@click.option("--spool", "spool_path", help="Spool file (default: KAFKA_SPOOL_PATH).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def spool_status(ctx: click.Context, spool_path: str | None, as_json: bool) -> None:
    """Pending depth and bytes, oldest pending age and the replayable trail.

    \b
    Example:
      openalgo-events spool status --spool /opt/openalgo/openalgo_events_spool.db
    """
    from .ops.trail import Trail

    settings = _settings(ctx)
    with Trail(spool_path or settings.spool_path) as trail:
        status = trail.status()
    if as_json:
        click.echo(json.dumps({**status.__dict__, "max_bytes": settings.spool_max_bytes}))
        return
    age = "-" if status.oldest_pending_age is None else f"{status.oldest_pending_age:.1f}s"
    since = "-" if status.oldest_delivered is None else format_when(status.oldest_delivered)
    click.echo(f"path:               {Path(status.path).resolve()}")
    click.echo(f"pending events:     {status.depth}")
    click.echo(f"pending bytes:      {status.pending_bytes} of {settings.spool_max_bytes} "
               "(KAFKA_SPOOL_MAX_BYTES)")
    click.echo(f"oldest pending age: {age}")
    click.echo(f"delivered (trail):  {status.delivered} events, {status.delivered_bytes} bytes, "
               f"since {since}")


# -- schemas and sample configuration ------------------------------------------------------
@main.group()
def schemas() -> None:
    """JSON Schema and AsyncAPI documents for consumers, generated from the catalog."""


@schemas.command("generate")
@click.option("--check", "check_only", is_flag=True,
              help="Write nothing; exit 1 if the files are stale.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path),
              help="Directory (default: the package's schemas/).")
def schemas_generate(check_only: bool, output: Path | None) -> None:
    """Write envelope.schema.json, <event_type>.data.schema.json and asyncapi.json.

    \b
    Examples:
      openalgo-events schemas generate
      openalgo-events schemas generate --check     # in CI
    """
    from . import schema

    directory = output or schema.SCHEMA_DIR
    if check_only:
        stale = schema.stale_files(directory)
        if stale:
            raise _Failure(f"schemas in {directory} are stale: {', '.join(stale)}; run "
                           "'openalgo-events schemas generate' and commit the result", 1)
        click.echo(f"schemas in {directory} are current")
        return
    changed = schema.write(directory)
    click.echo(f"wrote {len(changed)} changed file(s) to {directory}"
               + (f": {', '.join(changed)}" if changed else ""))


@main.command("sample-env")
def sample_env_command() -> None:
    """Print every variable with its default, in OpenAlgo's .sample.env style.

    \b
    Example:
      openalgo-events sample-env >> .sample.env
    """
    from .config import sample_env

    click.echo(sample_env(), nl=False)


@main.command("mode")
@click.argument("mode", type=click.Choice(["SOCKETIO", "KAFKA", "BOTH"], case_sensitive=False))
@click.option("--rollout", type=click.IntRange(0, 100), default=None,
              help="Share of users (0-100, by hash of user id) routed to Kafka; kept if omitted.")
@click.option("--url", default="http://127.0.0.1:5000", show_default=True,
              help="Base URL of the running app.")
@click.option("--prefix", default="/openalgo-events", show_default=True,
              help="The extension's url_prefix.")
@click.option("--token", envvar="ORDER_EVENT_ADMIN_TOKEN", show_envvar=True,
              help="Admin token (default: $ORDER_EVENT_ADMIN_TOKEN; never printed).")
def mode(mode: str, rollout: int | None, url: str, prefix: str, token: str | None) -> None:
    """Switch a running app to SOCKETIO, KAFKA or BOTH without a restart.

    \b
    Example:
      openalgo-events mode KAFKA --rollout 10 --url http://127.0.0.1:5000
    """
    import json
    import urllib.error
    import urllib.request

    if not token:
        raise click.UsageError("no admin token: set ORDER_EVENT_ADMIN_TOKEN or pass --token")
    body = {"mode": mode.upper(), **({"rollout_percent": rollout} if rollout is not None else {})}
    req = urllib.request.Request(
        url.rstrip("/") + prefix + "/mode", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        if detail.startswith("{"):
            detail = json.loads(detail).get("error", detail)
        raise click.ClickException(f"{req.full_url} answered {exc.code}: {detail}") from None
    except urllib.error.URLError as exc:
        raise click.ClickException(f"cannot reach {req.full_url}: {exc.reason}") from None
    click.echo(f"mode {answer['mode']}, rollout {answer['rollout_percent']}% "
               f"(was {answer['previous']['mode']}, {answer['previous']['rollout_percent']}%)"
               if answer.get("previous") else f"mode {answer['mode']}")


# -- demo -----------------------------------------------------------------------------------
@main.command("demo")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=5000, show_default=True,
              help="Port to listen on (0: any free port).")
@click.option("--with-broker", is_flag=True,
              help="Start the bundled Tansu broker and send events to it too (mode BOTH).")
@click.pass_context
def demo(ctx: click.Context, host: str, port: int, with_broker: bool) -> None:
    """Run the reference app: an order ticket and a live feed of every event it publishes.

    \b
    Examples:
      openalgo-events demo                  # Socket.IO only, no broker needed
      openalgo-events demo --with-broker    # Socket.IO and a local Kafka broker
    """
    from .errors import require

    require("flask_socketio", "socketio")
    from .demo.run import run

    env_file = (ctx.find_root().obj or {}).get("env_file", ".env")
    # A port in use or an address not here: werkzeug says so on stderr and exits with 1.
    left = run(host, port, with_broker, env_file=env_file, echo=click.echo)
    if left:
        click.echo(f"{left} events were not delivered before shutdown", err=True)


@main.command("consume")
@click.pass_context
def consume(ctx: click.Context) -> None:
    """Run the inbound consumer of KAFKA_ESB_EVENTS_TOPIC until SIGINT or SIGTERM.

    Handled offsets are committed on the way out. Without the app's Socket.IO server,
    acknowledgements and rejections are logged only (see docs/inbound.md).

    \b
    Example:
      KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 openalgo-events consume
    """
    import logging

    from .inbound.standalone import consume as run_consumer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    consumer = run_consumer(_settings(ctx))
    health = consumer.health()
    click.echo(f"stopped: {health['handled']} handled, {health['dead_lettered']} dead-lettered, "
               f"{health['duplicates_skipped']} duplicates skipped")


from .relay.command import register as _register_relay  # noqa: E402

_register_relay(main)
