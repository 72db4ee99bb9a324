"""openalgo-events: order events to browsers over Socket.IO and to Apache Kafka, none lost.

>>> from openalgo_events import EventPublisherFactory
>>> publisher = EventPublisherFactory.create_publisher(socketio=socketio)  # doctest: +SKIP
>>> publisher.publish_order_event("alice", "SBIN-EQ", "BUY", "ORD1", "live")  # doctest: +SKIP
"""

from __future__ import annotations

from .catalog import CATALOG, EventSpec, Field, Priority, register
from .config import Mode, Settings, validate_all_configs, validate_order_event_config
from .envelope import Envelope
from .errors import (
    ConfigError,
    EventNotStoredError,
    EventValidationError,
    MissingDependencyError,
    OpenAlgoEventsError,
    SpoolError,
)
from .publisher import (
    EventPublisher,
    EventPublisherFactory,
    KafkaEventPublisher,
    SocketIOEventPublisher,
    build_publisher,
)
from .testing import MemoryTransport, capture_events

__version__ = "0.1.0"

__all__ = [
    "CATALOG",
    "ConfigError",
    "Envelope",
    "EventNotStoredError",
    "EventPublisher",
    "EventPublisherFactory",
    "EventSpec",
    "EventValidationError",
    "Field",
    "KafkaEventPublisher",
    "MemoryTransport",
    "MissingDependencyError",
    "Mode",
    "OpenAlgoEventsError",
    "Priority",
    "Settings",
    "SocketIOEventPublisher",
    "SpoolError",
    "__version__",
    "build_publisher",
    "capture_events",
    "register",
    "validate_all_configs",
    "validate_order_event_config",
]
