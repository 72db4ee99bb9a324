"""Integrations at the edge: OpenAlgo's event bus, the Socket.IO emit mirror, the gunicorn
hook and the Kafka -> Socket.IO bridge.

>>> from openalgo_events.integrations import attach, mirror_emits  # doctest: +SKIP
"""

from __future__ import annotations

from .bridge import KafkaSocketIOBridge
from .installation import Installation, install
from .mirror import EmitMirror, mirror_emits, original_emit
from .openalgo import EVENT_TYPES, TOPICS, Attachment, attach, convert, event_type_for

__all__ = [
    "EVENT_TYPES",
    "TOPICS",
    "Attachment",
    "EmitMirror",
    "Installation",
    "KafkaSocketIOBridge",
    "attach",
    "convert",
    "event_type_for",
    "install",
    "mirror_emits",
    "original_emit",
]
