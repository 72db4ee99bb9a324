"""Handlers for inbound ESB messages, registered by ``event_type``.

A handler is ``fn(envelope, context) -> None``. Returning means handled (the offset is then
committed); raising any exception means "try again" (bounded retries, then the dead-letter
topic); raising ``DeadLetterError`` sends the message to the dead-letter topic at once, for
input that no retry can fix.

>>> @handler("margin_call")
... def on_margin_call(envelope, context):
...     print(envelope.user_id, envelope.data["amount"])
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from ..config import Settings
from ..envelope import Envelope, parse_timestamp
from ..errors import OpenAlgoEventsError
from ..transports import Transport

log = logging.getLogger("openalgo_events.inbound")

Handler = Callable[[Envelope, "HandlerContext"], None]
PositionCallback = Callable[[str, list[Any]], None]
NOTIFICATION_EVENT = "order_notification"


class DeadLetterError(OpenAlgoEventsError):
    """Raised by a handler for a message that no retry can fix: it goes to the dead-letter
    topic with ``reason`` (a short code) and ``detail`` (the explanation)."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        self.attempts = 0  # handler attempts made; the consumer fills it in
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class HandlerContext:
    """What a handler may use besides the envelope: the settings, the application's publisher
    (for replays), the Socket.IO notifier, and where the message came from."""

    settings: Settings
    publisher: Any  # EventPublisher | None
    notifier: Transport | None  # a SocketIOTransport when the app gave its Socket.IO server
    topic: str
    partition: int
    offset: int
    attempt: int
    headers: tuple[tuple[str, bytes], ...] = ()

    def notify(self, event: str, user_id: str, payload: Mapping[str, Any]) -> bool:
        """Emit ``event`` to the user's browser (or every browser, by ORDER_EVENT_SOCKETIO_SCOPE);
        False when there is no Socket.IO server in this process."""
        if self.notifier is None:
            return False
        self.notifier.publish(Envelope(event, user_id, dict(payload), source="esb"))
        return True


# Application handlers added with @handler; a consumer's own ones (handlers=, register())
# come first, the built-in ones last.
APP_HANDLERS: dict[str, Handler] = {}
BUILTIN_HANDLERS: dict[str, Handler] = {}


def handler(event_type: str, *, registry: MutableMapping[str, Handler] | None = None
            ) -> Callable[[Handler], Handler]:
    """Register ``fn`` as the handler of ``event_type`` for every consumer in the process."""
    target = APP_HANDLERS if registry is None else registry

    def decorate(fn: Handler) -> Handler:
        target[event_type] = fn
        return fn
    return decorate


# -- validation helpers ----------------------------------------------------------------------
def require_text(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise DeadLetterError("invalid_data", f"data.{name} is required and must be a "
                                              f"non-empty string (got {value!r})")
    return value


def optional_time(data: Mapping[str, Any], name: str) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    try:
        return parse_timestamp(str(value)).timestamp()
    except ValueError:
        raise DeadLetterError("invalid_data", f"data.{name}={value!r} is not an RFC 3339 "
                                              "timestamp such as 2026-01-29T10:30:00Z") from None


# -- built-in handlers ---------------------------------------------------------------------------
def _notification(envelope: Envelope, status: str, message: str) -> dict[str, Any]:
    data = envelope.data
    payload = {"status": status, "message": message, "orderid": data["orderid"],
               "source": str(data.get("source") or envelope.source or "ESB")}
    if data.get("symbol"):
        payload["symbol"] = data["symbol"]
    return payload


@handler("order_acknowledgment", registry=BUILTIN_HANDLERS)
def order_acknowledgment(envelope: Envelope, context: HandlerContext) -> None:
    """Tell the user's browser the ESB acknowledged the order (an ``order_notification``)."""
    orderid = require_text(envelope.data, "orderid")
    source = str(envelope.data.get("source") or envelope.source or "ESB")
    message = str(envelope.data.get("message") or f"Order {orderid} acknowledged by {source}")
    emitted = context.notify(NOTIFICATION_EVENT, envelope.user_id,
                             _notification(envelope, "acknowledged", message))
    log.info("order %s of user %s acknowledged by %s (event %s)%s", orderid, envelope.user_id,
             source, envelope.event_id, "" if emitted else "; no Socket.IO server to notify")


@handler("order_rejection", registry=BUILTIN_HANDLERS)
def order_rejection(envelope: Envelope, context: HandlerContext) -> None:
    """Tell the user's browser the ESB (e.g. a risk system) rejected the order."""
    orderid = require_text(envelope.data, "orderid")
    reason = require_text(envelope.data, "reason")
    emitted = context.notify(NOTIFICATION_EVENT, envelope.user_id,
                             _notification(envelope, "rejected", reason))
    log.info("order %s of user %s rejected: %s (event %s)%s", orderid, envelope.user_id, reason,
             envelope.event_id, "" if emitted else "; no Socket.IO server to notify")


def publisher_spool(publisher: Any) -> Any:
    """The delivered-events trail (a ``Spool``) behind a publisher, or None."""
    transport = getattr(publisher, "transport", None)
    kafka = getattr(transport, "kafka", transport)
    return getattr(kafka, "spool", None)


@handler("replay_request", registry=BUILTIN_HANDLERS)
def replay_request(envelope: Envelope, context: HandlerContext) -> None:
    """Re-publish a user's (or everyone's, ``"*"``) delivered events of a time window from the
    publisher's trail; the copies keep their event ids and carry ``openalgo_replay: 1``."""
    data = envelope.data
    target = data.get("user_id", envelope.user_id)
    if not isinstance(target, str) or not target:
        raise DeadLetterError("invalid_data", 'data.user_id must be a user id or "*"')
    if data.get("since") is None:
        raise DeadLetterError("invalid_data", "data.since (RFC 3339) is required")
    since, until = optional_time(data, "since"), optional_time(data, "until")
    types = data.get("event_types")
    if types is not None and not (isinstance(types, list)
                                  and all(isinstance(t, str) for t in types)):
        raise DeadLetterError("invalid_data", "data.event_types must be a list of event types")
    spool = publisher_spool(context.publisher)
    if spool is None:
        raise DeadLetterError("no_trail", "this consumer has no Kafka publisher with a spool; "
                                          "run it inside the app that publishes the events")
    count = spool.replay(user_id=None if target == "*" else target, since=since, until=until,
                         event_types=types)
    context.publisher.flush(0)  # wakes the relay; it sends the copies in the background
    log.info("replay for %s since %s until %s: %s events queued (request %s)", target,
             data.get("since"), data.get("until") or "now", count, envelope.event_id)


def positions_of(envelope: Envelope) -> list[Any]:
    positions = envelope.data.get("positions")
    if not isinstance(positions, list):
        raise DeadLetterError("invalid_data", "data.positions must be a list")
    return positions


@handler("position_reconciliation", registry=BUILTIN_HANDLERS)
def position_reconciliation(envelope: Envelope, context: HandlerContext) -> None:
    """Without an application callback there is nobody to reconcile with: keep the message in
    the dead-letter topic rather than drop it."""
    positions_of(envelope)
    raise DeadLetterError("unhandled", "no position_reconciliation callback is registered "
                                       "(EsbConsumer.on_position_reconciliation)")


def reconciliation_handler(callback: PositionCallback) -> Handler:
    """A handler that validates the positions and hands them to ``callback(user_id, positions)``."""
    def handle(envelope: Envelope, context: HandlerContext) -> None:
        callback(envelope.user_id, positions_of(envelope))
    return handle
