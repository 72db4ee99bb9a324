"""The ``openalgo-events`` command line: operators' tools.

Commands only parse options and print; the work lives in ``openalgo_events.ops``. Expected
failures (bad configuration, unreachable broker, missing extra, missing spool) end as one line
on stderr with a distinct exit status, never a traceback, and never show a secret.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from . import __version__
from ._words import plural
from .config import Settings
from .errors import ConfigError, OpenAlgoEventsError
from .ops.when import When, format_when

EXIT_CONFIG = 1
EXIT_BROKER = 2
DEMO_PORT = 8765  # the reference app's port (demo/run.py; not 5000, which OpenAlgo uses)


class _Failure(click.ClickException):
    """An expected error, shown as one ``Error: ...`` line on stderr.

    ``Error:`` is click's own prefix for usage errors, so every failure of every command
    reads the same way, whether click or this package found it.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click reads it per instance

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


def _config_failure(exc: ConfigError) -> _Failure:
    """One problem on the error line itself; several as a list under it."""
    if len(exc.problems) == 1:
        return _Failure(f"invalid configuration: {exc.problems[0]}", EXIT_CONFIG)
    listed = "\n".join(f"  - {problem}" for problem in exc.problems)
    return _Failure(f"invalid configuration ({len(exc.problems)} problems):\n{listed}",
                    EXIT_CONFIG)


class _FriendlyGroup(click.Group):
    """Turns the package's own errors, raised by any command, into ``_Failure``."""

    def invoke(self, ctx: click.Context) -> Any:
        from .ops.broker import BrokerUnreachableError

        try:
            return super().invoke(ctx)
        except BrokerUnreachableError as exc:
            raise _Failure(str(exc), EXIT_BROKER) from exc
        except ConfigError as exc:
            raise _config_failure(exc) from exc
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
      openalgo-events topics create         # create the order, ESB and dead-letter topics
      openalgo-events tail --user alice     # follow the order topic live
      openalgo-events replay --since 2h --user alice --dry-run
    """
    ctx.obj = {"env_file": env_file}


def _settings(ctx: click.Context) -> Settings:
    """The validated settings (``ConfigError`` becomes exit status 1 with the problems)."""
    env_file = (ctx.find_root().obj or {}).get("env_file", ".env")
    return Settings.from_env(env_file=env_file)


@main.command("dev-broker")
@click.option("--port", type=click.IntRange(1, 65535), default=9092, show_default=True,
              help="Port to listen on (it must be free).")
def dev_broker(port: int) -> None:
    """Run the bundled Tansu broker on 127.0.0.1:PORT (memory only) until interrupted.

    \b
    Example:
      openalgo-events dev-broker --port 9092 &
      export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092
    """
    from .devbroker import DevBroker

    broker = DevBroker(port).start()  # returns once its own process listens on the port
    click.echo(f"Tansu broker listening on {broker.bootstrap_servers} (memory storage; "
               "Ctrl-C stops it and loses its data)")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    code = None
    try:
        while broker.process is not None and (code := broker.process.poll()) is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        return
    finally:
        broker.stop()
    raise _Failure(f"the Tansu broker on {broker.bootstrap_servers} exited by itself "
                   f"(code {code})")


# -- check ----------------------------------------------------------------------------------
@main.command()
@click.option("--kafka", "force_kafka", is_flag=True,
              help="Test the broker even when ORDER_EVENT_MODE is SOCKETIO.")
@click.option("--timeout", default=5.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds to wait for the broker's answer.")
@click.option("-v", "--verbose", is_flag=True,
              help="Also list every setting (secrets masked) after the verdict.")
@click.pass_context
def check(ctx: click.Context, force_kafka: bool, timeout: float, verbose: bool) -> None:
    """Validate the configuration, test Kafka, and say whether publishing would work.

    The verdict comes first, whatever it is; the details (broker, topics, and with --verbose
    every setting, secrets masked) follow it. Exit status: 0 ok (publishing would work),
    1 configuration invalid, 2 broker unreachable (no broker answered), 3 a topic missing
    (create it with 'topics create').

    \b
    Examples:
      openalgo-events check
      openalgo-events check --kafka --timeout 2 --verbose
      KAFKA_BOOTSTRAP_SERVERS=kafka1:9092 ORDER_EVENT_MODE=BOTH openalgo-events check
    """
    from .ops.broker import BrokerUnreachableError

    settings = _settings(ctx)
    missing: list[str] = []
    failure: _Failure | None = None
    try:
        missing = _check_kafka(settings, force_kafka, timeout)
    except BrokerUnreachableError as exc:
        failure = _Failure(str(exc), EXIT_BROKER)
    except ConfigError as exc:
        failure = _config_failure(exc)
    if failure is not None:
        failure.show()  # now, so that the verdict precedes the details below
    for warning in settings.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"Mode {settings.mode.value}; spool {settings.spool_location}"
               + ("" if verbose else " (--verbose lists every setting)"))
    if verbose:
        click.echo("Configuration (secrets masked):")
        for name, value in settings.describe().items():
            click.echo(f"  {name:<32} {value}")
    if failure is not None:
        ctx.exit(failure.exit_code)
    if missing:
        ctx.exit(3)


def _check_kafka(settings: Settings, force_kafka: bool, timeout: float) -> list[str]:
    """Print check's verdict and the broker's and topics' details; return the missing topics.
    Raises ``BrokerUnreachableError`` or ``ConfigError`` before printing anything."""
    from .ops.broker import probe
    from .ops.trail import spool_location_problem

    if not (settings.mode.uses_kafka or force_kafka):
        click.echo("OK: mode SOCKETIO: events go to the app's Socket.IO clients; Kafka is "
                   "not used (--kafka tests the broker anyway).")
        return []
    problem = spool_location_problem(settings)
    if problem:
        raise ConfigError([problem])
    topics = [settings.order_events_topic]
    if settings.consumer_enabled:
        topics.append(settings.esb_events_topic)
    found = probe(settings, topics, timeout)
    missing = [topic for topic, partitions in found.partitions.items() if partitions is None]
    if missing:
        click.echo(f"Not ready: topic {', '.join(missing)} does not exist; create it with "
                   "'openalgo-events topics create' (events wait in the spool until then).")
    else:
        click.echo("OK: publishing to Kafka would work.")
    click.echo(f"Kafka: {settings.bootstrap_servers} answered: "
               f"{plural(len(found.brokers), 'broker')} {', '.join(found.brokers)}; "
               f"cluster id {found.cluster_id}")
    for topic, partitions in found.partitions.items():
        if partitions is None:
            click.echo(f"Topic {topic}: does not exist yet; create it with "
                       "'openalgo-events topics create'")
        else:
            click.echo(f"Topic {topic}: {plural(partitions, 'partition')}")
    if found.partitions.get(settings.order_events_topic) is not None:
        from .ops.broker import client_config
        from .transports.kafka_limits import topic_limit_problem

        limit = topic_limit_problem(client_config(settings), settings.order_events_topic,
                                    settings.max_message_bytes)
        if limit:
            click.echo(f"warning: {limit}", err=True)
    if not missing:
        from .ops.broker import guarantee_in_force

        click.echo(f"Delivery: {guarantee_in_force(settings, timeout)}")
    return missing


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
    """Create the order, ESB and dead-letter topics; existing ones are left alone.

    Each gets 5 partitions (keyed by user id) and replication factor 3, capped to the number
    of brokers. The order topic keeps 7 days, the ESB topic 24 hours, the dead-letter topic
    7 days; all snappy, max.message.bytes = ORDER_EVENT_MAX_MESSAGE_BYTES (1 MiB). Safe to
    run twice. Each line shows the topic as the cluster reports it afterwards (an existing
    topic with its own settings, and a warning where they differ).

    \b
    Examples:
      openalgo-events topics create
      openalgo-events topics create --partitions 12
    """
    from .ops.topics import create_topics, describe_line, planned_topics

    settings = _settings(ctx)
    plans = planned_topics(settings, partitions, replication_factor)
    warn = lambda text: click.echo(f"warning: {text}", err=True)  # noqa: E731
    for result in create_topics(settings, plans, timeout, warn):
        click.echo(describe_line(result))  # as read back from the cluster, not as planned


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
    ours = {plan.name for plan in planned_topics(settings)}
    wanted = list(names) or [plan.name for plan in planned_topics(settings)]
    missing = []
    for info in describe_topics(settings, wanted, timeout):
        if not info.exists:
            missing.append(info.name)
            continue
        click.echo(f"{info.name}: {plural(len(info.partitions), 'partition')}")
        for part in info.partitions:
            click.echo(f"  partition {part.id:<3} leader {part.leader:<5} replicas "
                       f"{part.replicas}  in-sync {part.isrs}")
        click.echo("  configs:")
        for key, (value, default) in info.configs.items():
            shown = "(sensitive)" if value is None else value
            click.echo(f"    {key} = {shown}{'  (default)' if default else ''}")
        click.echo("")
    if missing:
        raise _Failure("; ".join(_missing_topic_hint(name, name in ours) for name in missing))


def _missing_topic_hint(name: str, ours: bool) -> str:
    """What to do about a topic that does not exist: create ours, or check a stranger's name."""
    if ours:
        return f"topic {name} does not exist; create it with 'openalgo-events topics create'"
    return (f"topic {name} does not exist and is none of this configuration's topics "
            "(KAFKA_ORDER_EVENTS_TOPIC, KAFKA_ESB_EVENTS_TOPIC and its .dlq); check the name "
            "('openalgo-events topics describe' with no name shows this configuration's "
            "topics)")


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
        click.echo(f"following {topic} ({plural(partitions, 'partition')}) from {where}; "
                   "Ctrl-C stops", err=True)
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
SPOOL_HELP = ("The spool directory (default: KAFKA_SPOOL_PATH, or the default one per cluster "
              "and topic, as seen from this directory).")


@main.command()
@click.option("--since", type=When(), required=True, help="Window start: ISO 8601 or e.g. 2h.")
@click.option("--until", type=When(), help="Window end (default: now).")
@click.option("--user", help="Only this user's events (default: everyone's).")
@click.option("--event-type", "event_types", multiple=True, help="Only this type (repeatable).")
@click.option("--topic", help="Send to this topic (default: KAFKA_ORDER_EVENTS_TOPIC).")
@click.option("--spool", "spool_path", help=SPOOL_HELP)
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
    from .ops.trail import open_spool
    from .ops.trail import replay as replay_events

    settings = _settings(ctx)
    topic = topic or settings.order_events_topic
    until = until if until is not None else time.time()
    with open_spool(settings, spool_path) as trail:
        events = list(trail.trail(since=since, until=until, user_id=user,
                                  event_types=event_types))
    window = f"{format_when(since)} .. {format_when(until)}"
    who = f"user {user}" if user else "all users"
    if dry_run:
        for event in events:
            meta = event.meta
            click.echo(f"{format_when(event.created)}  {meta[2]:<24} {meta[3]:<14} {meta[1]}")
        click.echo(f"dry run: would re-publish {plural(len(events), 'event')} of {who} from "
                   f"{window} to {topic}")
        return
    if not events:
        click.echo(f"nothing to replay: no delivered events of {who} in {window}")
        return
    with click.progressbar(length=len(events), label=f"re-publishing to {topic}",
                           file=sys.stderr) as bar:
        sent = replay_events(settings, events, topic, timeout=timeout, on_delivered=bar.update)
    click.echo(f"re-published {plural(sent, 'event')} of {who} from {window} to {topic}")


# -- spool ----------------------------------------------------------------------------------
@main.group()
def spool() -> None:
    """Inspect the local spool, safe while the app runs ('retry' writes one mark)."""


@spool.command("status")
@click.option("--spool", "spool_path", help=SPOOL_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def spool_status(ctx: click.Context, spool_path: str | None, as_json: bool) -> None:
    """Pending events, the relay, rejected events and the replayable trail.

    \b
    Example:
      openalgo-events spool status --spool /opt/openalgo/openalgo_events_spool/orders-1a2b3c4d
    """
    from .ops.trail import open_spool, report

    settings = _settings(ctx)
    with open_spool(settings, spool_path) as opened:
        found = report(opened)
    status = found.relay_status
    if as_json:
        click.echo(json.dumps({
            "path": found.path, "depth": found.depth, "pending_bytes": found.pending_bytes,
            "max_bytes": settings.spool_max_bytes,
            "oldest_pending_age": found.oldest_pending_age, "relay_pid": found.relay_pid,
            "keeper_pid": found.keeper_pid, "rejected": found.rejected,
            "trail_bytes": found.trail_bytes, "oldest_trail": found.oldest_trail,
            "guarantee": status.get("guarantee"), "storage_fault": status.get("storage_fault")
            if found.relay_pid else None}))
        return
    age = "-" if found.oldest_pending_age is None else f"{found.oldest_pending_age:.1f}s"
    since = "-" if found.oldest_trail is None else format_when(found.oldest_trail)
    relay = (f"running (pid {found.relay_pid}), {status.get('guarantee') or 'starting'}"
             if found.relay_pid else "not running" + (
                 f" (its keeper, pid {found.keeper_pid}, starts it again)"
                 if found.keeper_pid else ""))
    click.echo(f"path:               {found.path}")
    click.echo(f"relay:              {relay}")
    click.echo(f"pending events:     {found.depth}")
    click.echo(f"pending bytes:      {found.pending_bytes} of {settings.spool_max_bytes} "
               "(KAFKA_SPOOL_MAX_BYTES)")
    click.echo(f"oldest pending age: {age}")
    click.echo(f"trail:              {found.trail_bytes} bytes of "
               f"{settings.trail_max_bytes} (KAFKA_TRAIL_MAX_BYTES), since {since}")
    click.echo(f"rejected:           {plural(found.rejected, 'event')} "
               "(openalgo-events spool rejected)")
    fault = status.get("storage_fault") if found.relay_pid else None
    if fault:
        click.echo(f"storage fault:      {fault['file']} {fault['path']}: {fault['error']} "
                   f"(since {fault['since']})")


@spool.command("rejected")
@click.option("--spool", "spool_path", help=SPOOL_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line.")
@click.pass_context
def spool_rejected(ctx: click.Context, spool_path: str | None, as_json: bool) -> None:
    """Events Kafka refused for good (too large, invalid).

    Each was set aside so the events after it kept flowing; fix the cause, then send it again
    with 'openalgo-events spool retry EVENT_ID'.
    """
    from .ops.trail import open_spool

    settings = _settings(ctx)
    with open_spool(settings, spool_path) as opened:
        events = opened.rejected()
    for event in events:
        if as_json:
            click.echo(json.dumps(event._asdict()))
        else:
            click.echo(f"{format_when(event.rejected)}  {event.event_type:<24} "
                       f"{event.user_id:<14} {event.event_id}  {event.size} bytes  "
                       f"{event.reason}")
    if not as_json:
        click.echo(f"{plural(len(events), 'rejected event')}")


@spool.command("retry")
@click.argument("event_id")
@click.option("--spool", "spool_path", help=SPOOL_HELP)
@click.pass_context
def spool_retry(ctx: click.Context, event_id: str, spool_path: str | None) -> None:
    """Send a rejected event again, once its cause is fixed.

    The relay sends it within a second, after the events pending now; it keeps its event id.
    If no relay runs, one is started.
    """
    from .ops.trail import open_spool, retry

    settings = _settings(ctx)
    with open_spool(settings, spool_path) as opened:
        click.echo(retry(settings, opened, event_id))


@spool.command("import")
@click.argument("old_spool", type=click.Path(exists=True, dir_okay=False))
@click.option("--spool", "spool_path", help=SPOOL_HELP)
@click.pass_context
def spool_import(ctx: click.Context, old_spool: str, spool_path: str | None) -> None:
    """Move the events a version-1 spool file still holds pending into this spool.

    Its relay then sends them (with their event ids); the old file is renamed to
    OLD_SPOOL.imported so it is never imported twice. Stop the app of the old version first.
    """
    from .spool.v1 import import_version_1

    settings = _settings(ctx)
    target = os.path.abspath(spool_path) if spool_path else settings.spool_location
    moved = import_version_1(old_spool, settings.with_spool(target))
    click.echo(f"imported {plural(moved, 'pending event')} from {old_spool} into {target}; "
               f"the old file is now {old_spool}.imported")


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
@click.option("--url", default=f"http://127.0.0.1:{DEMO_PORT}", show_default=True,
              help="Base URL of the running app (default: the reference app's).")
@click.option("--prefix", default="/openalgo-events", show_default=True,
              help="The extension's url_prefix.")
@click.option("--token", envvar="ORDER_EVENT_ADMIN_TOKEN", show_envvar=True,
              help="Admin token (default: $ORDER_EVENT_ADMIN_TOKEN, else that variable in the "
                   "env file; never printed).")
@click.pass_context
def mode(ctx: click.Context, mode: str, rollout: int | None, url: str, prefix: str,
         token: str | None) -> None:
    """Switch a running app to SOCKETIO, KAFKA or BOTH without a restart.

    The admin token is the app's ORDER_EVENT_ADMIN_TOKEN: --token, else that variable in the
    environment, else in the env file (.env in this directory, as the app reads it). KAFKA
    and BOTH need an app started with Kafka settings (KAFKA_BOOTSTRAP_SERVERS); one without
    them refuses the switch (400) and keeps its mode.

    \b
    Examples:
      ORDER_EVENT_ADMIN_TOKEN=demo-admin-token openalgo-events mode KAFKA
          # the reference app started with 'openalgo-events demo --with-broker'
      openalgo-events mode SOCKETIO --url http://127.0.0.1:5000
          # OpenAlgo, from its directory (its .env has the token): back to Socket.IO only
    """
    import json
    import urllib.error
    import urllib.request

    env_file = (ctx.find_root().obj or {}).get("env_file", ".env")
    token = token or _env_file_value(env_file, "ORDER_EVENT_ADMIN_TOKEN")
    if not token:
        raise _Failure(f"no admin token: set ORDER_EVENT_ADMIN_TOKEN in the environment or in "
                       f"{env_file} (the app's; --env-file names another), or pass --token")
    body = {"mode": mode.upper(), **({"rollout_percent": rollout} if rollout is not None else {})}
    req = urllib.request.Request(
        url.rstrip("/") + prefix + "/mode", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise _Failure(_mode_refusal(req.full_url, exc.code, exc.read())) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Failure(f"cannot reach {req.full_url}: {reason}; is the app running there "
                       "(--url)?") from None
    except ValueError:
        raise _Failure(f"{req.full_url} did not answer with JSON; is the openalgo-events "
                       "extension mounted there (--url, --prefix)?") from None
    click.echo(f"mode {answer['mode']}, rollout {answer['rollout_percent']}% "
               f"(was {answer['previous']['mode']}, {answer['previous']['rollout_percent']}%)"
               if answer.get("previous") else f"mode {answer['mode']}")


def _env_file_value(env_file: str, name: str) -> str | None:
    """``name`` as the env file sets it (python-dotenv, OpenAlgo's ``KEY = 'value'`` style,
    as the app reads the file), or None."""
    if not os.path.exists(env_file):
        return None
    from dotenv import dotenv_values

    return dotenv_values(env_file).get(name) or None


def _mode_refusal(url: str, status: int, body: bytes) -> str:
    """One line for a refused mode switch: the extension's own JSON error when it answered,
    or what a bare 404 from an app without the extension means (never its HTML)."""
    try:
        detail = json.loads(body).get("error")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, str) and status == 401 and "is not this app's" in detail:
        return (f"{url} answered {status}: {detail}; give mode the app's token (--token, "
                "ORDER_EVENT_ADMIN_TOKEN in the environment or in .env)")
    if isinstance(detail, str):
        return f"{url} answered {status}: {detail}"
    if status == 404:
        return (f"{url} answered 404: no openalgo-events extension there; check --url and "
                "--prefix (the app must mount OpenAlgoEvents)")
    return f"{url} answered {status} without an explanation"


# -- demo -----------------------------------------------------------------------------------
@main.command("demo")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEMO_PORT, show_default=True,
              help="Port to listen on (0: any free port; not 5000, OpenAlgo's own).")
@click.option("--with-broker", is_flag=True,
              help="Start the bundled Tansu broker and send events to it too (mode BOTH).")
@click.pass_context
def demo(ctx: click.Context, host: str, port: int, with_broker: bool) -> None:
    """Run the reference app: an order ticket and a live feed of every event it publishes.

    \b
    Examples:
      openalgo-events demo                  # Socket.IO only, no broker needed
      openalgo-events demo --with-broker    # Socket.IO and a local Kafka broker
      openalgo-events demo --port 8080      # or OPENALGO_EVENTS_DEMO_PORT=8080
    """
    from .errors import require

    require("flask_socketio", "socketio")
    from .demo.run import run

    env_file = (ctx.find_root().obj or {}).get("env_file", ".env")
    # A port in use is refused before anything starts (OpenAlgoEventsError, exit 1).
    left = run(host, port, with_broker, env_file=env_file, echo=click.echo)
    if left:
        click.echo(f"{plural(left, 'event')} not delivered before shutdown", err=True)


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
