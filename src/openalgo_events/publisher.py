"""The publish API: one ``publish`` underneath, the typed methods as thin wrappers.

``publish`` validates the event against the catalog, builds the envelope and hands it to the
transport. Bad input raises ``EventValidationError`` at the call, before anything is sent. An
event the spool could not store (disk full, directory not writable) raises
``EventNotStoredError``: it must never look accepted. That state is logged once when it starts
and once when it ends, counted, and turns health red meanwhile. Any other transport failure
(an emit to Socket.IO) is logged with the event id and counted, not raised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from ._threads import new_lock
from ._words import plural
from .catalog import CATALOG, Catalog
from .config import Mode, Settings
from .envelope import Envelope, to_json_value, unencodable
from .errors import ConfigError, EventNotStoredError, EventValidationError, SpoolError
from .recovery.server import RecoveryOptions
from .stats import Stats
from .transports import Transport
from .transports.routing import Route, RoutingTransport
from .transports.socketio import SocketIOTransport

log = logging.getLogger("openalgo_events")
_PUBLISH_LATENCY = Stats.key("publish_latency")


class EventPublisher:
    """Publishes catalog events through one transport.

    >>> from openalgo_events.testing import MemoryTransport
    >>> publisher = EventPublisher(MemoryTransport())
    >>> publisher.publish_order_event("alice", "SBIN-EQ", "BUY", "ORD1", "live").data["symbol"]
    'SBIN-EQ'
    """

    def __init__(
        self,
        transport: Transport,
        *,
        source: str = "openalgo",
        max_message_bytes: int = 1_048_576,
        catalog: Catalog = CATALOG,
        stats: Stats | None = None,
    ) -> None:
        self.transport = transport
        self.source = source
        self.max_message_bytes = max_message_bytes
        self.catalog = catalog
        self.stats = stats or getattr(transport, "stats", None) or Stats()
        self._not_stored_lock = new_lock()
        self._not_stored: str | None = None  # the storage error while events cannot be stored
        self.not_stored = 0  # events refused because they could not be stored

    # -- the one entry point ----------------------------------------------------------------
    def publish(self, event_type: str, user_id: str | None,
                data: Mapping[str, Any] | None = None, **fields: Any) -> Envelope:
        """Validate, build and send one event; returns its envelope.

        ``data`` and keyword ``fields`` are merged. Raises ``EventValidationError`` for an
        unknown type, a missing field, a secret, a non-JSON value or an oversized message, and
        ``EventNotStoredError`` when the spool could not store it (nothing was accepted).
        """
        # build() copies what it keeps (to_json_value), so a dict alone needs no merged copy
        merged = {**(data or {}), **fields} if fields else data or {}
        envelope = self.build(event_type, user_id, merged)
        self.send(envelope)
        return envelope

    def build(self, event_type: str, user_id: str | None, data: Mapping[str, Any],
              sequence: int | None = None) -> Envelope:
        """The validated envelope for an event, without sending it."""
        spec = self.catalog.spec(event_type)
        user = spec.system_user or user_id
        if not isinstance(user, str) or not user:
            raise EventValidationError(event_type, "user_id", "must be a non-empty string")
        if type(data) is not dict and not isinstance(data, Mapping):
            raise EventValidationError(event_type, "data", "must be a mapping of field names")
        spec.check(data)
        converted = to_json_value(data, event_type, "data")
        spec.check_types(converted)
        envelope = Envelope(event_type, user, converted, self.source, sequence=sequence)
        try:
            size = envelope.record_size()
        except (TypeError, UnicodeEncodeError) as exc:  # text UTF-8 cannot carry (a surrogate)
            found = (unencodable(user, event_type, "user_id")
                     or unencodable(converted, event_type, "data"))
            raise found or EventValidationError(event_type, None, str(exc)) from exc
        if size > self.max_message_bytes:
            raise EventValidationError(
                event_type, None,
                f"the message is {size} bytes as a Kafka record (value, key, headers and "
                f"framing), over the {self.max_message_bytes}-byte limit (the topic's "
                "max.message.bytes and the producer's message.max.bytes, both "
                "ORDER_EVENT_MAX_MESSAGE_BYTES); send less data",
            )
        return envelope

    def send(self, envelope: Envelope) -> None:
        """Hand a built envelope to the transport.

        Raises ``EventNotStoredError`` when the spool could not store it (counted as ``failed``
        and ``not_stored``; logged once per change of state, not per event). Other transport
        failures are logged and counted, not raised. Each transport counts what it accepts
        (``published``, by event type and transport).
        """
        started = time.perf_counter()
        try:
            self.transport.publish(envelope)
        except SpoolError as exc:
            self._refused(envelope, exc)
            raise EventNotStoredError(envelope.event_type, envelope.event_id, exc) from exc
        except Exception:
            self.stats.incr("failed", event_type=envelope.event_type, transport="publish")
            log.exception("could not publish %s event %s for user %s", envelope.event_type,
                          envelope.event_id, envelope.user_id)
            return
        self.stats.observe_all(_PUBLISH_LATENCY, (time.perf_counter() - started,))
        if self._not_stored is not None:
            self._stored_again()
        log.debug("published %s event %s for user %s", envelope.event_type, envelope.event_id,
                  envelope.user_id)

    def _refused(self, envelope: Envelope, exc: SpoolError) -> None:
        """Count an event that could not be stored; log when that state begins."""
        self.stats.incr("failed", event_type=envelope.event_type, transport="publish")
        self.stats.incr("not_stored", event_type=envelope.event_type)
        with self._not_stored_lock:
            self.not_stored += 1
            began, self._not_stored = self._not_stored is None, str(exc)
        if began:
            log.error("events cannot be stored, so they are refused (not sent, never reported "
                      "accepted) until this is fixed: %s", exc)

    def _stored_again(self) -> None:
        with self._not_stored_lock:
            ended, self._not_stored = self._not_stored is not None, None
        if ended:
            log.warning("events are stored again; %s were refused meanwhile", self.not_stored)

    # -- the typed methods ------------------------------------------------------------------
    def publish_order_event(self, user_id: str, symbol: str, action: str, orderid: str,
                            mode: str, **kwargs: Any) -> Envelope:
        return self.publish("order_event", user_id, {"symbol": symbol, "action": action,
                                                     "orderid": orderid, "mode": mode, **kwargs})

    def publish_analyzer_update(self, user_id: str, request: Mapping[str, Any],
                                response: Mapping[str, Any]) -> Envelope:
        return self.publish("analyzer_update", user_id, {"request": request, "response": response})

    def publish_order_notification(self, user_id: str, symbol: str, status: str, message: str,
                                   **kwargs: Any) -> Envelope:
        return self.publish("order_notification", user_id,
                            {"symbol": symbol, "status": status, "message": message, **kwargs})

    def publish_master_contract_download(self, broker: str, status: str, message: str,
                                         **kwargs: Any) -> Envelope:
        return self.publish("master_contract_download", None,
                            {"broker": broker, "status": status, "message": message, **kwargs})

    def publish_password_change(self, user_id: str, status: str, message: str,
                                **kwargs: Any) -> Envelope:
        return self.publish("password_change", user_id,
                            {"user": user_id, "status": status, "message": message, **kwargs})

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def mode(self) -> Mode | None:
        route = getattr(self.transport, "route", None)
        return route.mode if isinstance(route, Route) else None

    def switch_mode(self, mode: Mode | str, rollout_percent: int | None = None) -> Route:
        """Change SOCKETIO / KAFKA / BOTH (and the rollout share) without a restart."""
        if not isinstance(self.transport, RoutingTransport):
            raise ConfigError(["this publisher has a fixed transport; build it with "
                               "create_publisher() to switch modes at run time"])
        try:
            new_mode = Mode(str(getattr(mode, "value", mode)).upper())
        except ValueError:
            raise ConfigError(
                [f"mode {mode!r} is not valid; use SOCKETIO, KAFKA or BOTH"]) from None
        if rollout_percent is not None and not 0 <= rollout_percent <= 100:
            raise ConfigError([f"rollout percent {rollout_percent} is not in 0..100"])
        return self.transport.switch(new_mode, rollout_percent)

    def flush(self, timeout: float = 5.0) -> int:
        """Wait up to ``timeout`` seconds for accepted events; return how many remain."""
        return self.transport.flush(timeout)

    def close(self, timeout: float = 5.0) -> int:
        """Flush and release; return how many events were left undelivered (and where)."""
        left = self.transport.close(timeout)
        log.info("event publisher closed; %s undelivered", plural(left, "event"))
        return left

    def health(self) -> dict[str, Any]:
        """The transport's health; red while events cannot be stored (``storage_error``)."""
        status = self.transport.health()
        error = self._not_stored
        if error is not None:
            status = {**status, "healthy": False, "storage_error": error,
                      "events_not_stored": self.not_stored}
        return status


class SocketIOEventPublisher(EventPublisher):
    """The Socket.IO publisher: today's emits, unchanged (with ``recovery``, each payload also
    carries its offset and reconnecting sockets get what they missed).

    >>> publisher = SocketIOEventPublisher(socketio)  # doctest: +SKIP
    >>> SocketIOEventPublisher(socketio, recovery=RecoveryOptions())  # doctest: +SKIP
    """

    def __init__(self, socketio: Any, *, scope: str = "broadcast",
                 recovery: RecoveryOptions | None = None, **options: Any) -> None:
        stats = options.pop("stats", None) or Stats()
        super().__init__(SocketIOTransport(socketio, scope=scope, stats=stats,
                                           recovery=recovery), stats=stats, **options)


class KafkaEventPublisher(EventPublisher):
    """The Kafka publisher; other settings come from the environment.

    >>> publisher = KafkaEventPublisher("localhost:9092")  # doctest: +SKIP
    """

    def __init__(self, bootstrap_servers: str, topic: str = "from_openalgo_order_events", *,
                 settings: Settings | None = None, **options: Any) -> None:
        base = settings or Settings.from_env()
        env = {**base.to_env(), "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
               "KAFKA_ORDER_EVENTS_TOPIC": topic}
        settings = Settings.from_env(env)
        stats = options.pop("stats", None) or Stats()
        options.setdefault("source", settings.source)
        options.setdefault("max_message_bytes", settings.max_message_bytes)
        super().__init__(kafka_transport(settings, stats), stats=stats, **options)


def kafka_transport(settings: Settings, stats: Stats | None = None) -> Transport:
    """The Kafka transport for ``settings``: the app journals, a relay process sends
    (``transports.kafka``, ``relay``). ``KAFKA_SPOOL_PATH=:memory:`` runs that relay on a thread
    of this process, over a temporary spool (tests, notebooks): the same code, no durability.
    Raises ``SpoolError`` (the spool cannot be used) or ``ConfigError`` (it is another cluster's
    or topic's)."""
    from .transports.kafka import KafkaTransport

    return KafkaTransport(settings, stats=stats or Stats())


def build_publisher(settings: Settings, socketio: Any = None) -> EventPublisher:
    """A publisher routed by ``settings`` (mode, rollout), able to switch modes later."""
    stats = Stats()
    sio = (SocketIOTransport(socketio, scope=settings.socketio_scope, stats=stats,
                             recovery=RecoveryOptions.from_settings(settings))
           if socketio is not None else None)
    factory = (lambda: kafka_transport(settings, stats)) if settings.bootstrap_servers else None
    router = RoutingTransport(Route(settings.mode, settings.rollout_percent), socketio=sio,
                              kafka_factory=factory)
    for warning in settings.warnings:
        log.warning("%s", warning)
    log.info("order events: mode %s, rollout %s%%%s", settings.mode.value,
             settings.rollout_percent,
             f", topic {settings.order_events_topic}" if settings.mode.uses_kafka else "")
    return EventPublisher(router, source=settings.source,
                          max_message_bytes=settings.max_message_bytes, stats=stats)


class EventPublisherFactory:
    """The factory: one publisher per process, chosen by ``ORDER_EVENT_MODE``.

    >>> publisher = EventPublisherFactory.create_publisher(socketio=socketio)  # doctest: +SKIP
    """

    _instance: EventPublisher | None = None
    _lock = new_lock()

    @classmethod
    def create_publisher(cls, socketio: Any = None,
                         settings: Settings | None = None) -> EventPublisher:
        with cls._lock:
            if cls._instance is None:
                cls._instance = build_publisher(settings or Settings.from_env(), socketio)
            return cls._instance

    @classmethod
    def reset(cls, timeout: float = 5.0) -> None:
        """Close and forget the process's publisher (tests, reloads)."""
        with cls._lock:
            if cls._instance is not None:
                cls._instance.close(timeout)
            cls._instance = None
