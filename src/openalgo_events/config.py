"""Configuration: read once from the environment (and ``.env``), validated into ``Settings``.

With no variable set, the mode is SOCKETIO and the application behaves exactly as before.
Every problem is reported in one ``ConfigError`` naming the variable, the bad value and the fix.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import Enum, StrEnum
from typing import Any

from .errors import ConfigError

MASK = "********"


class Mode(StrEnum):
    """Where events go: the browser (today's behaviour), Kafka, or both."""

    SOCKETIO = "SOCKETIO"
    KAFKA = "KAFKA"
    BOTH = "BOTH"

    @property
    def uses_kafka(self) -> bool:
        return self is not Mode.SOCKETIO

    @property
    def uses_socketio(self) -> bool:
        return self is not Mode.KAFKA


COMPRESSION_CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
OFFSET_RESETS = ("earliest", "latest")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER")
SPOOL_SYNC = ("NORMAL", "FULL")
GUARANTEES = ("exactly_once", "at_least_once")
SOCKETIO_SCOPES = ("broadcast", "user")
PASSTHROUGH_PREFIX = "KAFKA_LIBRDKAFKA_"
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


@dataclass(frozen=True)
class Var:
    """One environment variable: its default, its parser and what it means."""

    name: str
    attr: str
    default: str
    help: str
    secret: bool = False


# name, Settings attribute, default, meaning. The order is the order of .sample.env.
VARIABLES: tuple[Var, ...] = (
    Var("ORDER_EVENT_MODE", "mode", "SOCKETIO", "SOCKETIO (default, today's behaviour), KAFKA, or BOTH"),
    Var("ORDER_EVENT_SOURCE", "source", "openalgo", "the envelope's source field"),
    Var("ORDER_EVENT_DEFAULT_USER", "default_user", "admin", "user id for events with no user (single-user installs)"),
    Var("ORDER_EVENT_SOCKETIO_SCOPE", "socketio_scope", "broadcast", "broadcast (today) or user: emit only to the user's room"),
    Var("ORDER_EVENT_SOCKETIO_RECOVERY", "socketio_recovery", "FALSE", "TRUE: browser events carry an offset and a reconnecting client gets what it missed"),
    Var("ORDER_EVENT_SOCKETIO_RECOVERY_SECONDS", "socketio_recovery_seconds", "120", "how long an emitted event stays recoverable from memory (KAFKA mode reads older ones back from the topic)"),
    Var("ORDER_EVENT_SOCKETIO_RECOVERY_MAX_EVENTS", "socketio_recovery_max_events", "5000", "events kept in memory for recovery, and the most one recovery sends (a longer gap is not recovered)"),
    Var("ORDER_EVENT_MAX_MESSAGE_BYTES", "max_message_bytes", "1048576", "largest Kafka record accepted (value, key, headers), also the producer's message.max.bytes and the topic's max.message.bytes"),
    Var("ORDER_EVENT_ADMIN_TOKEN", "admin_token", "", "bearer token for the mode-switch endpoint (empty: endpoint off)", secret=True),
    Var("KAFKA_BOOTSTRAP_SERVERS", "bootstrap_servers", "", "host:port[,host:port...] (required in KAFKA and BOTH modes)"),
    Var("KAFKA_ORDER_EVENTS_TOPIC", "order_events_topic", "from_openalgo_order_events", "topic events are published to"),
    Var("KAFKA_ESB_EVENTS_TOPIC", "esb_events_topic", "from_esb_order_events", "topic the inbound consumer reads"),
    Var("KAFKA_PRODUCER_COMPRESSION", "compression", "snappy", "none, gzip, snappy, lz4 or zstd"),
    Var("KAFKA_PRODUCER_BATCH_SIZE", "batch_size", "16384", "producer batch size in bytes"),
    Var("KAFKA_PRODUCER_LINGER_MS", "linger_ms", "10", "how long the producer waits to fill a batch"),
    Var("KAFKA_CONSUMER_GROUP", "consumer_group", "openalgo-order-consumer", "consumer group of the inbound consumer"),
    Var("KAFKA_CONSUMER_AUTO_OFFSET_RESET", "auto_offset_reset", "latest", "earliest or latest"),
    Var("KAFKA_SECURITY_PROTOCOL", "security_protocol", "PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"),
    Var("KAFKA_SASL_MECHANISM", "sasl_mechanism", "", "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, GSSAPI or OAUTHBEARER"),
    Var("KAFKA_SASL_USERNAME", "sasl_username", "", "SASL user name"),
    Var("KAFKA_SASL_PASSWORD", "sasl_password", "", "SASL password", secret=True),
    Var("KAFKA_SSL_CA_LOCATION", "ssl_ca_location", "", "CA certificate file for SSL"),
    Var("KAFKA_SPOOL_PATH", "spool_path", "", "the spool directory (default: openalgo_events_spool/<topic>-<cluster> in the working directory, one per cluster and topic); :memory: turns durability off"),
    Var("KAFKA_SPOOL_MAX_BYTES", "spool_max_bytes", "536870912", "pending bytes above which LOW and MEDIUM events are shed"),
    Var("KAFKA_SPOOL_SYNC", "spool_sync", "NORMAL", "NORMAL (survives a crash) or FULL (survives power loss, slower)"),
    Var("KAFKA_TRAIL_RETENTION_HOURS", "trail_retention_hours", "168", "how long delivered events stay replayable"),
    Var("KAFKA_TRAIL_MAX_BYTES", "trail_max_bytes", "1073741824", "bytes of delivered events' journal segments kept for replay; past it the oldest are pruned (never a pending one)"),
    Var("KAFKA_DELIVERY_GUARANTEE", "delivery_guarantee", "exactly_once", "exactly_once (Kafka transactions; at_least_once where the cluster refuses them) or at_least_once"),
    Var("KAFKA_RELAY_POSITIONS_TOPIC", "relay_positions_topic", "openalgo_events_positions", "compacted topic where the relay commits each journal's position with its events (exactly_once)"),
    Var("KAFKA_STALL_TIMEOUT_SECONDS", "stall_timeout_seconds", "10", "no delivery progress for this long rebuilds the producer"),
    Var("KAFKA_CLOSE_TIMEOUT_SECONDS", "close_timeout_seconds", "5", "how long the relay keeps delivering after SIGTERM before it stops"),
    Var("KAFKA_ROLLOUT_PERCENT", "rollout_percent", "100", "share of users (by hash of user id) whose events go to Kafka"),
    Var("KAFKA_CONSUMER_ENABLED", "consumer_enabled", "FALSE", "TRUE starts the inbound consumer inside the app"),
    Var("KAFKA_CONSUMER_MAX_ATTEMPTS", "consumer_max_attempts", "5", "handler attempts before a message goes to the dead-letter topic"),
    Var("KAFKA_CONSUMER_RETRY_BACKOFF_MS", "consumer_retry_backoff_ms", "200", "first retry delay, doubled each attempt"),
    Var("KAFKA_CONSUMER_MAX_AGE_SECONDS", "consumer_max_age_seconds", "300", "older inbound commands go to the dead-letter topic"),
    Var("KAFKA_CONSUMER_DLQ_TOPIC", "consumer_dlq_topic", "", "dead-letter topic (default: the ESB topic + .dlq)"),
    Var("KAFKA_CONSUMER_STATE_PATH", "consumer_state_path", "openalgo_events_consumer.db", "handled event ids, for idempotence across restarts"),
    Var("KAFKA_CONSUMER_UNHEALTHY_AFTER", "consumer_unhealthy_after", "5", "consecutive errors that make the consumer unhealthy"),
)
_BY_NAME = {v.name: v for v in VARIABLES}
_INT_VARS = {
    "ORDER_EVENT_MAX_MESSAGE_BYTES": 1, "KAFKA_PRODUCER_BATCH_SIZE": 1, "KAFKA_PRODUCER_LINGER_MS": 0,
    "KAFKA_SPOOL_MAX_BYTES": 1, "KAFKA_TRAIL_RETENTION_HOURS": 0,
    "KAFKA_TRAIL_MAX_BYTES": 1_048_576, "KAFKA_STALL_TIMEOUT_SECONDS": 1,
    "KAFKA_CLOSE_TIMEOUT_SECONDS": 0, "KAFKA_ROLLOUT_PERCENT": 0, "KAFKA_CONSUMER_MAX_ATTEMPTS": 1,
    "KAFKA_CONSUMER_RETRY_BACKOFF_MS": 0, "KAFKA_CONSUMER_MAX_AGE_SECONDS": 0,
    "KAFKA_CONSUMER_UNHEALTHY_AFTER": 1, "ORDER_EVENT_SOCKETIO_RECOVERY_SECONDS": 1,
    "ORDER_EVENT_SOCKETIO_RECOVERY_MAX_EVENTS": 1,
}  # name -> smallest allowed value
_CHOICES: dict[str, tuple[str, ...]] = {
    "ORDER_EVENT_MODE": tuple(m.value for m in Mode),
    "ORDER_EVENT_SOCKETIO_SCOPE": SOCKETIO_SCOPES,
    "KAFKA_PRODUCER_COMPRESSION": COMPRESSION_CODECS,
    "KAFKA_CONSUMER_AUTO_OFFSET_RESET": OFFSET_RESETS,
    "KAFKA_SECURITY_PROTOCOL": SECURITY_PROTOCOLS,
    "KAFKA_SPOOL_SYNC": SPOOL_SYNC,
    "KAFKA_DELIVERY_GUARANTEE": GUARANTEES,
}
_CASE_INSENSITIVE = {"ORDER_EVENT_MODE", "KAFKA_SECURITY_PROTOCOL", "KAFKA_SPOOL_SYNC"}
_BOOL_VARS = {"KAFKA_CONSUMER_ENABLED", "ORDER_EVENT_SOCKETIO_RECOVERY"}
_BOOL = {"TRUE": True, "1": True, "YES": True, "FALSE": False, "0": False, "NO": False}


@dataclass(frozen=True)
class Settings:
    """Validated, immutable configuration. Build it with ``Settings.from_env()``.

    >>> Settings.from_env({}).mode
    <Mode.SOCKETIO: 'SOCKETIO'>
    """

    mode: Mode = Mode.SOCKETIO
    source: str = "openalgo"
    default_user: str = "admin"
    socketio_scope: str = "broadcast"
    socketio_recovery: bool = False
    socketio_recovery_seconds: int = 120
    socketio_recovery_max_events: int = 5000
    max_message_bytes: int = 1_048_576
    admin_token: str = field(default="", repr=False)
    bootstrap_servers: str = ""
    order_events_topic: str = "from_openalgo_order_events"
    esb_events_topic: str = "from_esb_order_events"
    compression: str = "snappy"
    batch_size: int = 16384
    linger_ms: int = 10
    consumer_group: str = "openalgo-order-consumer"
    auto_offset_reset: str = "latest"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    ssl_ca_location: str = ""
    spool_path: str = ""
    spool_max_bytes: int = 536_870_912
    spool_sync: str = "NORMAL"
    trail_retention_hours: int = 168
    trail_max_bytes: int = 1_073_741_824
    delivery_guarantee: str = "exactly_once"
    relay_positions_topic: str = "openalgo_events_positions"
    stall_timeout_seconds: int = 10
    close_timeout_seconds: int = 5
    rollout_percent: int = 100
    consumer_enabled: bool = False
    consumer_max_attempts: int = 5
    consumer_retry_backoff_ms: int = 200
    consumer_max_age_seconds: int = 300
    consumer_dlq_topic: str = ""
    consumer_state_path: str = "openalgo_events_consumer.db"
    consumer_unhealthy_after: int = 5
    librdkafka: Mapping[str, str] = field(default_factory=dict, repr=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, env_file: str | None = ".env"
    ) -> Settings:
        """Read and validate. ``environ`` defaults to ``os.environ`` plus ``env_file``.

        ``.env`` is read the way OpenAlgo does (python-dotenv, never overriding a set variable).
        """
        if environ is None:
            if env_file and os.path.exists(env_file):
                from dotenv import load_dotenv

                load_dotenv(env_file, override=False)
            environ = os.environ
        return _parse(environ)

    @property
    def spool_location(self) -> str:
        """The spool directory, absolute: ``KAFKA_SPOOL_PATH``, or by default one per cluster
        and topic under ``openalgo_events_spool/`` in the working directory (resolved now:
        run tools from the app's directory); ``:memory:`` as it is."""
        if self.spool_path == ":memory:":
            return self.spool_path
        from .spool.format import default_spool_path

        return os.path.abspath(self.spool_path or default_spool_path(self.bootstrap_servers,
                                                                     self.order_events_topic))

    def with_spool(self, path: str) -> Settings:
        """These settings with ``KAFKA_SPOOL_PATH`` set to ``path``."""
        from dataclasses import replace

        return replace(self, spool_path=path)

    @property
    def dlq_topic(self) -> str:
        return self.consumer_dlq_topic or f"{self.esb_events_topic}.dlq"

    def client_config(self) -> dict[str, str]:
        """librdkafka properties shared by producers, consumers and admin clients."""
        conf = {"bootstrap.servers": self.bootstrap_servers, "client.id": "openalgo-events"}
        conf["security.protocol"] = self.security_protocol
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password:
            conf["sasl.password"] = self.sasl_password
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        conf.update(self.librdkafka)
        return conf

    def producer_config(self) -> dict[str, str | int | bool]:
        """The producer's properties: durable (acks=all, idempotent), batched as configured."""
        conf: dict[str, str | int | bool] = {
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": self.compression,
            "batch.size": self.batch_size,
            "linger.ms": self.linger_ms,
            # One limit end to end: what publish accepts (the record, framing included) is what
            # librdkafka sends and what a topic made by 'topics create' takes (its
            # max.message.bytes). librdkafka's own default, 1,000,000, refused larger ones.
            "message.max.bytes": max(1000, self.max_message_bytes),
        }
        conf.update(self.client_config())
        return conf

    def to_env(self) -> dict[str, str]:
        """The settings as environment variables (secrets included: never log this)."""
        env: dict[str, str] = {}
        for var in VARIABLES:
            value = getattr(self, var.attr)
            if isinstance(value, bool):
                env[var.name] = "TRUE" if value else "FALSE"
            elif isinstance(value, Enum):
                env[var.name] = value.value
            else:
                env[var.name] = str(value)
        for key, value in self.librdkafka.items():
            env[PASSTHROUGH_PREFIX + key.upper().replace(".", "_")] = value
        return env

    def describe(self) -> dict[str, str]:
        """Every variable and its value, secrets masked: safe to print or log."""
        out = {}
        for var in VARIABLES:
            value = self.to_env()[var.name]
            out[var.name] = MASK if var.secret and value else value
        for key, value in self.librdkafka.items():
            name = PASSTHROUGH_PREFIX + key.upper().replace(".", "_")
            out[name] = MASK if _looks_secret(key) else value
        return out


def _looks_secret(key: str) -> bool:
    """A librdkafka property whose value may carry a credential: by the event data's rule
    (``envelope.is_secret_key``: passw, secret, token, auth, private, jwt, ...) plus the
    properties that hold one without saying so (a JAAS config, a kinit command line with its
    keytab or password, a PEM key, a key password)."""
    from .envelope import is_secret_key

    norm = key.lower()
    return is_secret_key(key) or any(word in norm for word in (
        "jaas", "kinit", "keytab", "key.pem", "key.password", "keystore", "sasl.oauthbearer"))


def _parse(environ: Mapping[str, str]) -> Settings:
    problems: list[str] = []
    warnings: list[str] = []
    values: dict[str, Any] = {}
    for var in VARIABLES:
        raw = environ.get(var.name)
        raw = var.default if raw is None or raw.strip() == "" else raw.strip()
        shown = MASK if var.secret else repr(raw)
        if var.name in _CASE_INSENSITIVE:
            raw = raw.upper()
        if var.name == "KAFKA_DELIVERY_GUARANTEE":
            raw = raw.lower().replace("-", "_")
        if var.name in _INT_VARS:
            try:
                number = int(raw)
            except ValueError:
                problems.append(f"{var.name}={shown} is not a whole number; set it to an integer "
                                f"such as {var.default} ({var.help})")
                continue
            if number < _INT_VARS[var.name]:
                problems.append(f"{var.name}={shown} is below {_INT_VARS[var.name]}; "
                                f"use a value such as {var.default}")
                continue
            values[var.attr] = number
        elif var.name in _CHOICES:
            choices = _CHOICES[var.name]
            if raw not in choices:
                problems.append(f"{var.name}={shown} is not valid; use one of: {', '.join(choices)}")
                continue
            values[var.attr] = Mode(raw) if var.name == "ORDER_EVENT_MODE" else raw
        elif var.name in _BOOL_VARS:
            if raw.upper() not in _BOOL:
                problems.append(f"{var.name}={shown} is not a boolean; use TRUE or FALSE")
                continue
            values[var.attr] = _BOOL[raw.upper()]
        else:
            values[var.attr] = raw

    if values.get("rollout_percent", 0) > 100:
        problems.append(f"KAFKA_ROLLOUT_PERCENT={values['rollout_percent']!r} is above 100; "
                        "use a percentage from 0 to 100")
    sasl = values.get("sasl_mechanism", "")
    if sasl and sasl.upper() not in SASL_MECHANISMS:
        problems.append(f"KAFKA_SASL_MECHANISM={sasl!r} is not valid; use one of: "
                        f"{', '.join(SASL_MECHANISMS)}")
    elif sasl:
        values["sasl_mechanism"] = sasl.upper()

    mode = values.get("mode")
    servers = values.get("bootstrap_servers", "")
    if isinstance(mode, Mode) and mode.uses_kafka and not servers:
        problems.append(f"ORDER_EVENT_MODE={mode.value} requires KAFKA_BOOTSTRAP_SERVERS; set it to "
                        "your brokers as host:port[,host:port] (or run 'openalgo-events dev-broker' "
                        "for a local one)")
    if servers:
        entries = [s.strip() for s in servers.split(",")]
        bad = [s for s in entries if not _HOST_PORT.match(s)]
        out_of_range = [s for s in entries if s not in bad and not _valid_host_port(s)]
        if bad:
            problems.append(f"KAFKA_BOOTSTRAP_SERVERS={servers!r} is malformed at {bad[0]!r}; "
                            "use host:port entries separated by commas, e.g. "
                            "'kafka1:9092,kafka2:9092'")
        elif out_of_range:
            problems.append(f"KAFKA_BOOTSTRAP_SERVERS={servers!r}: the port of "
                            f"{out_of_range[0]!r} is out of range; use a port from 1 to 65535, "
                            "e.g. 'kafka1:9092'")
    protocol = values.get("security_protocol", "PLAINTEXT")
    if protocol.startswith("SASL") and not sasl:
        problems.append(f"KAFKA_SECURITY_PROTOCOL={protocol} requires KAFKA_SASL_MECHANISM "
                        f"(one of: {', '.join(SASL_MECHANISMS)})")
    if not protocol.startswith("SASL"):
        unused = [name for name, attr in (("KAFKA_SASL_MECHANISM", "sasl_mechanism"),
                                          ("KAFKA_SASL_USERNAME", "sasl_username"),
                                          ("KAFKA_SASL_PASSWORD", "sasl_password"))
                  if values.get(attr)]
        if unused:
            warnings.append(f"{', '.join(unused)} {'is' if len(unused) == 1 else 'are'} set but "
                            f"KAFKA_SECURITY_PROTOCOL={protocol} does not use SASL, so the "
                            "credentials are not sent; set KAFKA_SECURITY_PROTOCOL=SASL_SSL "
                            "(or SASL_PLAINTEXT) to use them")
    if sasl in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") and not (
        values.get("sasl_username") and values.get("sasl_password")
    ):
        problems.append(f"KAFKA_SASL_MECHANISM={sasl} requires KAFKA_SASL_USERNAME and "
                        "KAFKA_SASL_PASSWORD")
    for name in ("KAFKA_ORDER_EVENTS_TOPIC", "KAFKA_ESB_EVENTS_TOPIC",
                 "KAFKA_RELAY_POSITIONS_TOPIC"):
        topic = values.get(_BY_NAME[name].attr, "")
        if topic and not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", topic):
            problems.append(f"{name}={topic!r} is not a valid Kafka topic name; use letters, "
                            "digits, '.', '_' and '-' only")

    librdkafka = {}
    for name, raw in environ.items():
        if name.startswith(PASSTHROUGH_PREFIX) and len(name) > len(PASSTHROUGH_PREFIX):
            librdkafka[name[len(PASSTHROUGH_PREFIX):].lower().replace("_", ".")] = raw
        elif name.startswith(("KAFKA_", "ORDER_EVENT_")) and name not in _BY_NAME:
            close = difflib.get_close_matches(name, list(_BY_NAME), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            warnings.append(f"{name} is not an openalgo-events variable and is ignored{hint}")

    if problems:
        raise ConfigError(problems)
    known = {f.name for f in fields(Settings)}
    return Settings(**{k: v for k, v in values.items() if k in known},
                    librdkafka=librdkafka, warnings=tuple(warnings))


def _valid_host_port(entry: str) -> bool:
    match = _HOST_PORT.match(entry)
    return bool(match) and 0 < int(match.group(2)) < 65536  # type: ignore[union-attr]


def sample_env() -> str:
    """The ``.sample.env`` block, in OpenAlgo's ``KEY = 'value'`` style, every default shown."""
    lines = ["# openalgo-events: order events to Socket.IO (default) and/or Kafka.",
             "# Every variable is optional; with none set, nothing changes.", ""]
    for var in VARIABLES:
        lines.append(f"# {var.help}")
        lines.append(f"{var.name} = '{var.default}'")
    lines += ["", f"# Any librdkafka property: {PASSTHROUGH_PREFIX}<PROPERTY_WITH_UNDERSCORES>,",
              f"# e.g. {PASSTHROUGH_PREFIX}MESSAGE_MAX_BYTES = '1048576' sets message.max.bytes."]
    return "\n".join(lines) + "\n"


def validate_order_event_config(environ: Mapping[str, str] | None = None) -> str:
    """The start-up check: validate and return the mode (``'SOCKETIO'``...)."""
    return Settings.from_env(environ).mode.value


def validate_all_configs(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``validate_all_configs``: ``{'order_event_mode': mode}``, or ``ConfigError``."""
    return {"order_event_mode": validate_order_event_config(environ)}
