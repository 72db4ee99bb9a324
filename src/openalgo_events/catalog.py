"""The catalog of event types: one entry each, and no transport knows any of them.

Adding an event type is one ``register(EventSpec(...))``. The publisher validates ``data``
against the entry at the call; the schema generator turns the entries into JSON Schema.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from functools import cached_property
from typing import Any

from .envelope import is_secret_key
from .errors import EventValidationError

# JSON Schema type -> the Python types of its converted value (bool is not a number here).
_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "number": (int, float), "integer": (int,), "boolean": (bool,),  # exact
    "object": (dict,), "array": (list,), "null": (type(None),),
}


class Priority(IntEnum):
    """Each event type's priority: when the spool is over its limit, LOW and MEDIUM are shed
    first."""

    LOW = 0
    MEDIUM = 1
    HIGH = 2
    CRITICAL = 3


@dataclass(frozen=True)
class Field:
    """One field of an event's ``data``: its JSON Schema type(s) and whether it is required."""

    name: str
    type: str | tuple[str, ...] = "string"
    required: bool = False
    description: str = ""


@dataclass(frozen=True)
class EventSpec:
    """An event type: its fields, its priority and, for system events, its fixed user id."""

    name: str
    description: str
    fields: tuple[Field, ...] = ()
    priority: Priority = Priority.HIGH
    system_user: str | None = None  # e.g. "admin" for master_contract_download
    forbidden: frozenset[str] = field(default_factory=frozenset)
    # Fields that go to Kafka only: the Socket.IO payload (``socketio_payload``) leaves them
    # out, whatever the scope, because a broadcast reaches every user's browser.
    kafka_only: frozenset[str] = field(default_factory=frozenset)

    def socketio_payload(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The browser payload for ``data``: a copy without the ``kafka_only`` fields."""
        if not self.kafka_only:
            return dict(data)
        return {k: v for k, v in data.items() if k not in self.kafka_only}

    @cached_property
    def required(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.required)

    @cached_property
    def _types(self) -> dict[str, frozenset[type]]:
        """Declared field -> the exact Python types of its converted value (bool is a type of
        its own, not a number)."""
        out = {}
        for f in self.fields:
            kinds = f.type if isinstance(f.type, tuple) else (f.type,)
            out[f.name] = frozenset(t for kind in kinds for t in _PY_TYPES[kind])
        return out

    def check(self, data: Mapping[str, Any]) -> None:
        """Raise ``EventValidationError`` naming the first missing or forbidden field.

        ``forbidden`` event types refuse any top-level key that names a credential (the
        ``envelope.is_secret_key`` rule) instead of dropping it: the caller has a bug.
        """
        for name in self.required:
            if name not in data:
                raise EventValidationError(self.name, name, "is required")
        for name in data if self.forbidden else ():
            if type(name) is str and (name.lower() in self.forbidden or is_secret_key(name)):
                raise EventValidationError(
                    self.name, name, "looks like a secret and is never published; remove it"
                )

    def check_types(self, data: Mapping[str, Any]) -> None:
        """Raise ``EventValidationError`` naming the first declared field whose converted value
        (plain JSON types) is not of its declared JSON type; the generated JSON Schema says the
        same."""
        types = self._types
        for name, value in data.items():  # one dict probe per key: this runs on every publish
            allowed = types.get(name)
            if allowed is not None and type(value) not in allowed and (
                    type(value) is bool or not isinstance(value, tuple(allowed))):
                field = next(f for f in self.fields if f.name == name)
                kinds = field.type if isinstance(field.type, tuple) else (field.type,)
                raise EventValidationError(
                    self.name, name, f"must be a {' or '.join(kinds)} (the catalog's type), "
                    f"not {'null' if value is None else type(value).__name__}")


NUMBER = ("number", "string")  # OpenAlgo sends quantities and prices both as numbers and strings


def required(name: str, type: str | tuple[str, ...] = "string", description: str = "") -> Field:
    """A field every event of the type must carry."""
    return Field(name, type, True, description)



class Catalog(Mapping[str, EventSpec]):
    """A registry of ``EventSpec`` by name."""

    def __init__(self, specs: tuple[EventSpec, ...] = ()) -> None:
        self._specs: dict[str, EventSpec] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: EventSpec) -> EventSpec:
        self._specs[spec.name] = spec
        return spec

    def spec(self, event_type: str) -> EventSpec:
        try:
            return self._specs[event_type]
        except KeyError:
            raise EventValidationError(
                event_type,
                None,
                "unknown event type; add it to the catalog with "
                "openalgo_events.catalog.register(EventSpec(...))",
            ) from None

    def __getitem__(self, name: str) -> EventSpec:
        return self._specs[name]

    def get(self, name: str, default: Any = None) -> Any:  # a dict lookup, not Mapping's
        return self._specs.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)


_SECRETS = frozenset({"password", "old_password", "new_password", "confirm_password", "apikey",
                      "api_key", "api_secret", "secret", "access_token", "auth_token"})

CATALOG = Catalog(
    (
        # The five core order events.
        EventSpec(
            "order_event",
            "An order was placed (or a basket, split, options or multi-leg order completed).",
            (
                required("symbol"), required("action"),
                required("orderid"), required("mode", description="live or analyze"),
                Field("broker"), Field("exchange"), Field("quantity", NUMBER),
                Field("price", NUMBER), Field("price_type"), Field("product_type"),
                Field("batch_order", "boolean"), Field("is_last_order", "boolean"),
            ),
            Priority.CRITICAL,
        ),
        EventSpec(
            "analyzer_update",
            "A sandbox (analyze mode) request and its response.",
            (required("request", "object"), required("response", "object")),
            Priority.HIGH,
        ),
        EventSpec(
            "order_notification",
            "An informational order message, such as a smart order with nothing to do.",
            (
                required("symbol"), required("status"), required("message"),
                Field("notification_type"),
            ),
            Priority.MEDIUM,
        ),
        EventSpec(
            "master_contract_download",
            "The master contract download after a broker login finished (or made progress).",
            (
                # OpenAlgo's own emit has no broker, so only status and message are required.
                required("status"), required("message"), Field("broker"),
                Field("symbols_count", "integer"), Field("download_time_seconds", "number"),
            ),
            Priority.LOW,
            system_user="admin",
        ),
        EventSpec(
            "password_change",
            "A user's password was changed. Never carries the password itself.",
            (
                required("user"), required("status"), required("message"),
                Field("ip_address"), Field("user_agent"),
            ),
            Priority.LOW,
            forbidden=_SECRETS,
            kafka_only=frozenset({"ip_address", "user_agent"}),  # personal data: audit only
        ),
        # What else OpenAlgo's Socket.IO layer emits today.
        EventSpec(
            "modify_order_event",
            "An order was modified.",
            (required("status"), required("orderid"), required("mode")),
            Priority.CRITICAL,
        ),
        EventSpec(
            "cancel_order_event",
            "An order (or all orders) was cancelled.",
            (
                required("status"), required("orderid"), required("mode"),
                Field("batch_order", "boolean"), Field("is_last_order", "boolean"),
                Field("canceled_count", "integer"), Field("failed_count", "integer"),
            ),
            Priority.CRITICAL,
        ),
        EventSpec(
            "close_position_event",
            "A position was closed.",
            (required("status"), required("message"), required("mode")),
            Priority.CRITICAL,
        ),
        EventSpec(
            "gtt_event",
            "A GTT (good-till-triggered) order changed state.",
            (
                required("event"), Field("symbol"), Field("exchange"),
                Field("trigger_id", ("string", "integer")), Field("triggered_order_id"),
                Field("mode"),
            ),
            Priority.CRITICAL,
        ),
        EventSpec(
            "order_update",
            "The broker reported an order's new status.",
            (
                required("orderid"), required("order_status"), Field("mode"),
                Field("broker"), Field("symbol"), Field("exchange"), Field("action"),
                Field("quantity", NUMBER), Field("price", NUMBER),
                Field("filled_quantity", NUMBER), Field("pending_quantity", NUMBER),
                Field("average_price", NUMBER), Field("rejection_reason"),
            ),
            Priority.CRITICAL,
        ),
        EventSpec(
            "force_logout",
            "A user's sessions are being ended (logout, expiry, password change).",
            (required("message"),),
            Priority.MEDIUM,
        ),
        EventSpec(
            "active_sessions_update",
            "The list of a user's active sessions changed.",
            (required("count", "integer"), Field("sessions", "array")),
            Priority.LOW,
        ),
        EventSpec(
            "pending_order_created",
            "An order is waiting for approval (semi-automatic mode).",
            (),
            Priority.HIGH,
        ),
        EventSpec(
            "pending_order_updated",
            "An order waiting for approval was approved or rejected.",
            (),
            Priority.HIGH,
        ),
    )
)

register = CATALOG.register
