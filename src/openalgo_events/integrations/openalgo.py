"""OpenAlgo's in-process event bus, published as catalog events with no edit to OpenAlgo.

``attach(bus, publisher)`` subscribes one callback to all 26 topics. The callback runs on the
bus's shared pool, so it only converts the event and hands the envelope to the publisher (whose
``send`` only enqueues: a spool append or a Socket.IO queue put).

Each bus event becomes the event type OpenAlgo's own Socket.IO subscriber emits for it (see
``event_type_for``), so Kafka consumers and the browser use the same names. ``data`` is the
event's full fields (the API key dropped, secrets in ``request_data`` scrubbed) plus the keys of
today's browser payload for that type, with the values OpenAlgo's subscriber gives them (in
KAFKA mode the browser's toast is built from this ``data``), and ``bus_topic``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._threads import new_lock
from ..catalog import EventSpec, Field, Priority, register
from ..config import Settings
from ..envelope import Envelope, scrub_secrets
from ..errors import EventNotStoredError
from ..publisher import EventPublisher

log = logging.getLogger("openalgo_events.openalgo")

ORDER_FAILED = register(EventSpec(
    "order_failed",
    "An order could not be placed, modified or cancelled, or a sandbox request failed. "
    "OpenAlgo shows no toast for it in live mode; Kafka consumers still want it.",
    (
        Field("operation", required=True, description="place, modify, cancel or analyze"),
        Field("error_message", required=True), Field("mode", required=True),
        Field("symbol"), Field("exchange"), Field("orderid"),
    ),
    Priority.CRITICAL,
))

Payload = Callable[[Mapping[str, Any]], dict[str, Any]]
UserResolver = Callable[[str], "str | None"]


def _order_event(e: Mapping[str, Any]) -> dict[str, Any]:
    return {"symbol": e.get("symbol", ""), "action": e.get("action", ""),
            "orderid": e.get("orderid", ""), "exchange": e.get("exchange", ""),
            "price_type": e.get("pricetype", ""), "product_type": e.get("product", "")}


# The batch summaries below carry the values OpenAlgo's own subscriber puts in its toast
# ("<action> Order Placed for Symbol: <symbol>, Order ID: <orderid>"): in KAFKA mode the bridge
# emits our data to the browser, so any other value would change the toast. The counts stay in
# the event's own fields (successful, total, results, ...) for Kafka consumers.
def _summary(**toast: Any) -> dict[str, Any]:
    return {**toast, "batch_order": True, "is_last_order": True}


def _tally(e: Mapping[str, Any]) -> str:
    return f"{e.get('successful', 0)}/{e.get('total', 0)} orders"


def _basket_summary(e: Mapping[str, Any]) -> dict[str, Any]:
    """A basket names no symbol: the toast shows the strategy and the count as the action."""
    ok = e.get("successful", 0)
    return _summary(symbol=e.get("strategy") or "Basket", action=_tally(e),
                    orderid=f"basket_{ok}", exchange="MULTI", price_type="BASKET",
                    product_type="BASKET")


def _split_summary(e: Mapping[str, Any]) -> dict[str, Any]:
    return _summary(symbol=e.get("symbol") or "Split", action=e.get("action") or "SPLIT",
                    orderid=_tally(e), exchange=e.get("exchange") or "Unknown",
                    price_type=e.get("pricetype") or "MARKET",
                    product_type=e.get("product") or "MIS")


def _options_summary(e: Mapping[str, Any]) -> dict[str, Any]:
    """As a split, but symbol, action and exchange are the event's, even when empty."""
    return _summary(symbol=e.get("symbol", ""), action=e.get("action", ""), orderid=_tally(e),
                    exchange=e.get("exchange", ""), price_type=e.get("pricetype") or "MARKET",
                    product_type=e.get("product") or "MIS")


def _multiorder_summary(e: Mapping[str, Any]) -> dict[str, Any]:
    """The strategy stands in the action's place; ``multiorder_summary`` is a flag."""
    ok, failed = e.get("successful_legs", 0), e.get("failed_legs", 0)
    return _summary(symbol=e.get("underlying", ""), action=e.get("strategy") or "Multi-Order",
                    orderid=f"{ok}/{e.get('total', 0)} legs", exchange=e.get("exchange", ""),
                    price_type="MULTI", product_type="OPTIONS", multiorder_summary=True,
                    successful_legs=ok, failed_legs=failed)


def _failure(operation: str) -> Payload:
    return lambda e: {"operation": operation, "error_message": e.get("error_message", "")}


def _gtt(e: Mapping[str, Any]) -> dict[str, Any]:
    return {"event": str(e.get("topic", "")).removeprefix("gtt."),
            "symbol": e.get("symbol", ""), "exchange": e.get("exchange", ""),
            "trigger_id": e.get("trigger_id", ""),
            "triggered_order_id": e.get("triggered_order_id", "")}


def _analyzer(e: Mapping[str, Any]) -> dict[str, Any]:
    return {"request": e.get("request_data") or {}, "response": e.get("response_data") or {}}


@dataclass(frozen=True)
class TopicRule:
    """Where one bus topic lands in live mode: the event type and its browser payload keys."""

    event_type: str
    payload: Payload


# Topic -> live-mode event type. In analyze mode every topic but order.update is an
# analyzer_update, as OpenAlgo's own subscriber emits it.
TOPICS: Mapping[str, TopicRule] = {
    "order.placed": TopicRule("order_event", _order_event),
    "order.failed": TopicRule("order_failed", _failure("place")),
    "order.no_action": TopicRule("order_notification", lambda e: {
        "symbol": e.get("symbol", ""), "status": "info", "message": e.get("message", "")}),
    "order.modified": TopicRule("modify_order_event", lambda e: {
        "status": "success", "orderid": e.get("orderid", "")}),
    "order.modify_failed": TopicRule("order_failed", _failure("modify")),
    "order.cancelled": TopicRule("cancel_order_event", lambda e: {
        "status": e.get("status", ""), "orderid": e.get("orderid", "")}),
    "order.cancel_failed": TopicRule("order_failed", _failure("cancel")),
    "order.update": TopicRule("order_update", lambda e: {}),
    # OpenAlgo's toast says "success" for these two even when the operation failed (a
    # semi-auto block, a broker error); the outcome stays in response_data["status"].
    "orders.all_cancelled": TopicRule("cancel_order_event", lambda e: {
        "status": "success", "orderid": f"{e.get('canceled_count', 0)} orders canceled",
        "batch_order": True, "is_last_order": True}),
    "position.closed": TopicRule("close_position_event", lambda e: {
        "status": "success", "message": e.get("message") or "All Open Positions Squared Off"}),
    "basket.completed": TopicRule("order_event", _basket_summary),
    "split.completed": TopicRule("order_event", _split_summary),
    "options.completed": TopicRule("order_event", _options_summary),
    "multiorder.completed": TopicRule("order_event", _multiorder_summary),
    "analyzer.error": TopicRule("order_failed", _failure("analyze")),
    "sandbox.order_filled": TopicRule("analyzer_update", _analyzer),
    "sandbox.auto_squareoff": TopicRule("analyzer_update", _analyzer),
    "sandbox.t1_settlement": TopicRule("analyzer_update", _analyzer),
    **{f"gtt.{name}": TopicRule("gtt_event", _gtt) for name in (
        "placed", "failed", "modified", "modify_failed", "cancelled", "cancel_failed",
        "triggered", "expired")},
}
BOTH_MODES = frozenset({"order.update"})  # the same event type in analyze mode
EVENT_TYPES = frozenset({rule.event_type for rule in TOPICS.values()} | {"analyzer_update"})
"""Every event type the adapter publishes (the emit mirror skips these from bus threads)."""


def event_type_for(topic: str, mode: str) -> str:
    """The event type a bus event of ``topic`` in ``mode`` ("live"/"analyze") becomes."""
    rule = TOPICS[topic]
    if mode == "analyze" and topic not in BOTH_MODES:
        return "analyzer_update"
    return rule.event_type


def fields_of(event: Any) -> dict[str, Any]:
    """A bus event (a dataclass, or a mapping) as a plain dict."""
    if dataclasses.is_dataclass(event) and not isinstance(event, type):
        return dataclasses.asdict(event)
    if isinstance(event, Mapping):
        return dict(event)
    raise TypeError(f"a bus event must be a dataclass or a mapping, not {type(event).__name__}")


def _redact(value: Any, secret: str) -> Any:
    """``value`` with every occurrence of ``secret`` in a string masked, at any depth."""
    if isinstance(value, str):
        return value.replace(secret, "********") if secret in value else value
    if isinstance(value, Mapping):
        return {k: _redact(v, secret) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v, secret) for v in value]
    return value


def convert(event: Any) -> tuple[str, dict[str, Any]]:
    """The event type and ``data`` for one bus event; no secret survives.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class E:
    ...     topic: str = "order.cancelled"; mode: str = "live"; api_key: str = "k"
    ...     orderid: str = "1"; status: str = "success"
    >>> convert(E())[0], sorted(convert(E())[1])
    ('cancel_order_event', ['bus_topic', 'mode', 'orderid', 'status'])
    """
    full = fields_of(event)
    topic = str(full.get("topic", ""))
    api_key = full.pop("api_key", None)
    # Credentials by meaning (envelope.is_secret_key), at every depth: the same rule as the
    # publisher's, so the browser payload built below never sees one either.
    full = scrub_secrets(full)
    if isinstance(api_key, str) and len(api_key) >= 8:
        full = _redact(full, api_key)
    mode = str(full.get("mode") or "live")
    event_type = event_type_for(topic, mode)
    rule = TOPICS[topic]
    payload = _analyzer(full) if event_type == "analyzer_update" else rule.payload(full)
    return event_type, {**full, **payload, "mode": mode, "bus_topic": topic}


class Attachment:
    """The adapter's subscription to a bus; ``detach()`` undoes it.

    >>> attachment = attach(bus, publisher, default_user="alice")  # doctest: +SKIP
    >>> attachment.detach()  # doctest: +SKIP
    """

    def __init__(self, bus: Any, publisher: EventPublisher, *,
                 user_resolver: UserResolver | None, default_user: str) -> None:
        self.bus = bus
        self.publisher = publisher
        self.default_user = default_user
        self._resolver = user_resolver
        self._resolved: dict[str, str] = {}  # sha256(api key) -> user id
        self._lock = new_lock()
        self._sequences: dict[str, int] = {}
        self.received = 0
        self.published = 0
        self.failed = 0
        self._callback = self._on_event  # one bound method, so unsubscribe finds it
        self.topics: tuple[str, ...] = ()

    def _subscribe(self) -> None:
        for topic in TOPICS:
            self.bus.subscribe(topic, self._callback, name="openalgo_events")
        self.topics = tuple(TOPICS)
        with _active_lock:
            _active.add(self)

    def detach(self) -> None:
        """Unsubscribe from every topic; events already handed to the publisher still go out."""
        for topic in self.topics:
            self.bus.unsubscribe(topic, self._callback)
        self.topics = ()
        with _active_lock:
            _active.discard(self)

    def sequence(self, user_id: str) -> int:
        """The last sequence number given to ``user_id``'s events (0 before the first)."""
        with self._lock:
            return self._sequences.get(user_id, 0)

    def user_of(self, fields: Mapping[str, Any]) -> str:
        """``request_data["user_id"]``, else the resolver's answer for the API key, else the
        default user. Never the API key itself."""
        request = fields.get("request_data")
        user = request.get("user_id") if isinstance(request, Mapping) else None
        if isinstance(user, str) and user:
            return user
        api_key = fields.get("api_key")
        if self._resolver is not None and isinstance(api_key, str) and api_key:
            resolved = self._resolve(api_key, str(fields.get("topic")))
            if resolved:
                return resolved
        return self.default_user

    def _resolve(self, api_key: str, topic: str) -> str | None:
        digest = hashlib.sha256(api_key.encode()).hexdigest()
        cached = self._resolved.get(digest)
        if cached is not None:
            return cached
        try:
            user = self._resolver(api_key) if self._resolver else None
        except Exception as exc:  # the message may hold the key: log only its type
            log.warning("the user resolver failed on a %s event (%s); using the default user",
                        topic, type(exc).__name__)
            return None
        if not isinstance(user, str) or not user or user == api_key:
            return None
        if len(self._resolved) >= 1024:
            self._resolved.clear()
        self._resolved[digest] = user
        return user

    def _on_event(self, event: Any) -> None:
        """The bus callback: convert, stamp, enqueue. Never raises into the bus's pool."""
        try:
            fields = fields_of(event)
            user = self.user_of(fields)
            event_type, data = convert(event)
            envelope = self.publisher.build(event_type, user, data)
        except Exception:
            with self._lock:
                self.received += 1
                self.failed += 1
            log.exception("could not convert a %s bus event",
                          getattr(event, "topic", type(event).__name__))
            return
        try:
            self.publisher.send(self._stamp(envelope))
        except EventNotStoredError:  # counted, and logged once per state, by the publisher
            with self._lock:
                self.failed += 1

    def _stamp(self, envelope: Envelope) -> Envelope:
        """Give the envelope its user's next sequence number, at receipt, with no gap."""
        with self._lock:
            self.received += 1
            self.published += 1
            number = self._sequences.get(envelope.user_id, 0) + 1
            self._sequences[envelope.user_id] = number
        return dataclasses.replace(envelope, sequence=number)


_active: set[Attachment] = set()
_active_lock = new_lock()


def adapter_attached() -> bool:
    """Whether an adapter is attached to a bus in this process."""
    with _active_lock:
        return bool(_active)


def attach(bus: Any, publisher: EventPublisher, *, user_resolver: UserResolver | None = None,
           default_user: str | None = None) -> Attachment:
    """Subscribe to all 26 topics of OpenAlgo's bus and publish each event through
    ``publisher``.

    ``user_resolver`` maps an API key to a user name (answers are cached by the key's hash);
    ``default_user`` (default ``ORDER_EVENT_DEFAULT_USER``'s default, ``admin``) is used when
    neither the event nor the resolver names a user.

    >>> from utils.event_bus import bus  # doctest: +SKIP
    >>> attachment = attach(bus, publisher, default_user="alice")  # doctest: +SKIP
    """
    attachment = Attachment(bus, publisher, user_resolver=user_resolver,
                            default_user=default_user or Settings().default_user)
    attachment._subscribe()
    return attachment
