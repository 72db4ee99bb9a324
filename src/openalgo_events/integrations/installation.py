"""Install the OpenAlgo integration into a running app, from the environment alone.

This is what the gunicorn hook calls once the app is imported; an app can also call it itself.
By ``ORDER_EVENT_MODE``:

- SOCKETIO: nothing is installed (the rollback switch).
- BOTH: the bus adapter and the emit mirror publish to Kafka; the app's own emits reach its
  browsers as today. The single-process migration mode: the UI never depends on Kafka.
- KAFKA: as BOTH, plus a ``KafkaSocketIOBridge``, and the mirror holds back the app's
  broadcasts: every process's browsers get every event from the topic, once.

The publisher given to the adapter and the mirror is Kafka-only: OpenAlgo already emits its
toasts to the browser itself.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._hostlog import guard
from .._threads import wait_until
from ..config import Mode, Settings
from ..envelope import Envelope
from ..errors import ConfigError
from ..publisher import EventPublisher, kafka_transport
from ..stats import Stats
from ..transports.routing import Route, RoutingTransport
from .bridge import KafkaSocketIOBridge
from .mirror import EmitMirror, mirror_emits
from .openalgo import Attachment, attach

log = logging.getLogger("openalgo_events.install")

ENV_BUS = "OPENALGO_EVENTS_BUS"
ENV_SOCKETIO = "OPENALGO_EVENTS_SOCKETIO"
ENV_USER_RESOLVER = "OPENALGO_EVENTS_USER_RESOLVER"
ENV_MIRROR = "OPENALGO_EVENTS_MIRROR"
ENV_MIRROR_ALLOW = "OPENALGO_EVENTS_MIRROR_ALLOW"
ENV_MIRROR_DENY = "OPENALGO_EVENTS_MIRROR_DENY"
DEFAULT_BUS = "utils.event_bus:bus"
DEFAULT_SOCKETIO = "extensions:socketio"


@dataclass
class Installation:
    """What ``install`` put in place; ``close()`` flushes and removes it."""

    settings: Settings
    publisher: EventPublisher
    attachment: Attachment
    mirror: EmitMirror | None = None
    bridge: KafkaSocketIOBridge | None = None
    operations: Any = None  # the routes' state (flask.EventsState) when the hook mounted them

    def close(self, timeout: float | None = None) -> int:
        """Stop taking events and flush; return how many stay in the spool for next time."""
        self.attachment.detach()
        if self.mirror is not None:
            self.mirror.remove()
        if self.bridge is not None:
            self.bridge.stop()
        if self.operations is not None and self.operations.consumer is not None:
            consumer = self.operations.consumer
            consumer.stop(0)  # ask only: its stop() waits on a real event, which would block
            # the hub and with it the green task that emits the consumer's last notifications
            wait_until(lambda: not consumer.health()["running"],
                       self.settings.close_timeout_seconds)
        wait = self.settings.close_timeout_seconds if timeout is None else timeout
        return self.publisher.close(wait)

    def health(self) -> dict[str, Any]:
        routed = self.publisher.health()  # the route, with each transport's health inside
        kafka = routed.get("transports", {}).get("kafka", routed)
        route = getattr(self.publisher.transport, "route", None)
        return {"mode": route.mode.value if route else self.settings.mode.value,
                "publisher": kafka,
                "adapter": {"received": self.attachment.received,
                            "published": self.attachment.published,
                            "failed": self.attachment.failed},
                "bridge": self.bridge.health() if self.bridge else None}


current: Installation | None = None
"""The process's installation, once ``install`` has run."""


class Discard:
    """Where the events of users outside the rollout share go: nowhere (OpenAlgo's own
    Socket.IO emits already reach their browsers)."""

    name = "none"

    def publish(self, envelope: Envelope) -> None:
        pass

    def flush(self, timeout: float = 0) -> int:
        return 0

    def close(self, timeout: float = 0) -> int:
        return 0

    def health(self) -> dict[str, Any]:
        return {"transport": self.name, "healthy": True}


def resolve(spec: str) -> Any:
    """The object named ``module:attribute`` (or ``module.attribute``)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep:
        module_name, _, attribute = spec.rpartition(".")
    if not module_name or not attribute:
        raise ConfigError([f"{spec!r} does not name an object; use module:attribute, "
                           "e.g. utils.event_bus:bus"])
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


def _names(raw: str | None) -> list[str] | None:
    return [n.strip() for n in raw.split(",") if n.strip()] if raw else None


def install(environ: Mapping[str, str] | None = None) -> Installation | None:
    """Attach to the app's bus (and Socket.IO instance) as the environment says.

    Never raises: a problem is logged and the app runs as before, without events on Kafka.
    """
    global current
    guard()  # under eventlet, our real threads' log records reach the host's handlers via the hub
    env = os.environ if environ is None else environ
    try:
        settings = Settings.from_env(environ)
    except ConfigError as exc:
        log.error("openalgo-events not installed: %s", exc)
        return None
    if settings.mode is Mode.SOCKETIO:
        log.info("ORDER_EVENT_MODE=SOCKETIO: openalgo-events leaves the app as it is")
        return None
    try:
        bus = resolve(env.get(ENV_BUS) or DEFAULT_BUS)
    except Exception as exc:
        log.error("openalgo-events not installed: no event bus at %s (%s); set %s to "
                  "module:attribute", env.get(ENV_BUS) or DEFAULT_BUS, exc, ENV_BUS)
        return None
    socketio = _optional(env.get(ENV_SOCKETIO) or DEFAULT_SOCKETIO, ENV_SOCKETIO)
    resolver: Callable[[str], str | None] | None = (
        _optional(env[ENV_USER_RESOLVER], ENV_USER_RESOLVER) if env.get(ENV_USER_RESOLVER)
        else None)
    stats = Stats()
    transport = kafka_transport(settings, stats)
    percent = settings.rollout_percent
    if percent < 100 and settings.mode is Mode.KAFKA:
        log.warning("KAFKA_ROLLOUT_PERCENT=%s is not applied in KAFKA mode, where the bridge "
                    "makes every browser emit; use BOTH for a gradual rollout", percent)
        percent = 100
    # Always routed, so POST /openalgo-events/mode can switch at run time. OpenAlgo still emits
    # to every browser itself: the "Socket.IO" side of the route is Discard.
    transport = RoutingTransport(Route(settings.mode, percent), socketio=Discard(),
                                 kafka=transport)
    publisher = EventPublisher(transport, source=settings.source,
                               max_message_bytes=settings.max_message_bytes, stats=stats)
    attachment = attach(bus, publisher, user_resolver=resolver,
                        default_user=settings.default_user)
    installation = Installation(settings, publisher, attachment)
    mirror_on = (env.get(ENV_MIRROR) or "TRUE").upper() not in ("FALSE", "0", "NO")
    if socketio is not None and mirror_on:
        if settings.mode is Mode.KAFKA:  # the bridge makes every UI emit; see the module doc
            installation.bridge = KafkaSocketIOBridge(settings, socketio).start()
        installation.mirror = mirror_emits(
            socketio, publisher, allow=_names(env.get(ENV_MIRROR_ALLOW)),
            deny=_names(env.get(ENV_MIRROR_DENY)),
            local=True if installation.bridge is None else _bridge_off(transport),
            default_user=settings.default_user)
    log.info("openalgo-events installed: mode %s, topic %s, mirror %s, bridge %s",
             settings.mode.value, settings.order_events_topic,
             "on" if installation.mirror else "off", "on" if installation.bridge else "off")
    current = installation
    return installation


def mount(installation: Installation, app: Any) -> Any:
    """Mount the operations routes of ``installation`` on ``app`` (a Flask app; anything else
    is logged and skipped) and start the inbound consumer if enabled; never raises."""
    try:
        from flask import Flask

        from .flask import mount_operations

        if not isinstance(app, Flask):
            log.warning("openalgo-events: no health, metrics or mode routes: the WSGI app is a "
                        "%s, not a Flask app", type(app).__name__)
            return None
        socketio = installation.mirror.socketio if installation.mirror else None
        if socketio is None:
            socketio = _optional(os.environ.get(ENV_SOCKETIO) or DEFAULT_SOCKETIO, ENV_SOCKETIO)
        installation.operations = mount_operations(
            app, installation.settings, installation.publisher, socketio=socketio,
            bridge=installation.bridge)
        return installation.operations
    except Exception:
        log.exception("openalgo-events: could not mount the operations routes")
        return None


def _bridge_off(transport: RoutingTransport) -> Callable[[], bool]:
    """Whether the app's own broadcasts must reach its browsers directly: unless the route in
    force sends every event to Kafka, for the bridge to emit (after a switch by POST /mode)."""
    def local() -> bool:
        route = transport.route
        return route.mode is not Mode.KAFKA or route.rollout_percent < 100
    return local


def _optional(spec: str, variable: str) -> Any:
    try:
        return resolve(spec)
    except Exception as exc:
        log.warning("openalgo-events: nothing at %s (%s); set %s to module:attribute",
                    spec, exc, variable)
        return None
