"""Transports: where an envelope goes. Each is a small class behind the ``Transport`` protocol.

A transport knows nothing of event types; adding one to the catalog touches none of them.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ..envelope import Envelope


@runtime_checkable
class Transport(Protocol):
    """Sends envelopes. ``publish`` must return quickly and never wait on the network."""

    name: str

    def publish(self, envelope: Envelope) -> None:
        """Accept one envelope for sending."""

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for what was accepted; return how many remain."""

    def close(self, timeout: float) -> int:
        """Flush, release resources; return how many events were left undelivered."""

    def health(self) -> dict[str, Any]:
        """A JSON-able status; ``healthy`` is False when events are not getting through."""


__all__ = ["Transport"]
