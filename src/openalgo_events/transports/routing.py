"""Routing between Socket.IO and Kafka: the mode, the rollout share, and switching at run time.

A route is immutable and is read once per event, so an event published while the mode is
being switched goes out exactly once, on the old path or the new one, never on neither.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._threads import new_lock
from ..config import Mode
from ..envelope import Envelope
from ..errors import ConfigError
from . import Transport

log = logging.getLogger("openalgo_events.routing")


def in_rollout(user_id: str, percent: int) -> bool:
    """Whether a user is in the rollout share: a stable hash, the same in every process."""
    if percent >= 100:
        return True
    bucket = int.from_bytes(hashlib.blake2b(user_id.encode(), digest_size=8).digest(), "big")
    return bucket % 10_000 < percent * 100


@dataclass(frozen=True)
class Route:
    mode: Mode
    rollout_percent: int = 100

    def __str__(self) -> str:
        """What log lines show: ``BOTH, rollout 10%`` (not the dataclass and enum reprs)."""
        return f"{self.mode.value}, rollout {self.rollout_percent}%"


class RoutingTransport:
    """Sends each envelope to Socket.IO, Kafka or both, by mode and rollout share.

    In KAFKA mode, users outside the rollout share stay on Socket.IO; in BOTH mode they get
    Socket.IO only, and users inside it get both.
    """

    name = "routing"

    def __init__(self, route: Route, *, socketio: Transport | None = None,
                 kafka: Transport | None = None,
                 kafka_factory: Callable[[], Transport] | None = None) -> None:
        self.socketio = socketio
        self.kafka = kafka
        self._kafka_factory = kafka_factory
        self._switch_lock = new_lock()
        self._check(route)
        self.route = route

    def _check(self, route: Route) -> None:
        if route.mode.uses_kafka and self.kafka is None:
            if self._kafka_factory is None:
                raise ConfigError([f"ORDER_EVENT_MODE={route.mode.value} needs Kafka settings "
                                   "(KAFKA_BOOTSTRAP_SERVERS)"])
            self.kafka = self._kafka_factory()
        needs_socketio = route.mode.uses_socketio or route.rollout_percent < 100
        if needs_socketio and self.socketio is None:
            why = (f"ORDER_EVENT_MODE={route.mode.value}" if route.mode.uses_socketio else
                   f"ORDER_EVENT_MODE={route.mode.value} with KAFKA_ROLLOUT_PERCENT="
                   f"{route.rollout_percent} (users outside the share stay on Socket.IO)")
            raise ConfigError([f"{why} emits to Socket.IO, so the publisher needs the app's "
                               "Flask-SocketIO instance: create_publisher(socketio=socketio)"])

    def switch(self, mode: Mode, rollout_percent: int | None = None) -> Route:
        """Atomically change the route; transports a new route needs are built first."""
        with self._switch_lock:
            percent = self.route.rollout_percent if rollout_percent is None else rollout_percent
            route = Route(mode, percent)
            self._check(route)
            old, self.route = self.route, route
        log.warning("order event route switched from %s to %s", old, route)
        return route

    def targets(self, user_id: str, route: Route | None = None) -> tuple[Transport, ...]:
        route = route or self.route
        if route.mode is Mode.SOCKETIO:
            return (self.socketio,)  # type: ignore[return-value]
        kafka_user = in_rollout(user_id, route.rollout_percent)
        if route.mode is Mode.KAFKA:
            return (self.kafka if kafka_user else self.socketio,)  # type: ignore[return-value]
        if kafka_user:
            return (self.socketio, self.kafka)  # type: ignore[return-value]
        return (self.socketio,)  # type: ignore[return-value]

    def publish(self, envelope: Envelope) -> None:
        """Publish on the route in force now, read once."""
        for transport in self.targets(envelope.user_id, self.route):
            transport.publish(envelope)

    def _each(self) -> list[Transport]:
        return [t for t in (self.socketio, self.kafka) if t is not None]

    def flush(self, timeout: float = 5.0) -> int:
        return sum(t.flush(timeout) for t in self._each())

    def close(self, timeout: float = 5.0) -> int:
        return sum(t.close(timeout) for t in self._each())

    def health(self) -> dict[str, Any]:
        parts = {t.name: t.health() for t in self._each()}
        active = {t.name for t in self._each()
                  if (t is self.kafka and self.route.mode.uses_kafka)
                  or (t is self.socketio and (self.route.mode.uses_socketio
                                             or self.route.rollout_percent < 100))}
        return {
            "mode": self.route.mode.value,
            "rollout_percent": self.route.rollout_percent,
            "healthy": all(p["healthy"] for name, p in parts.items() if name in active),
            "transports": parts,
        }
