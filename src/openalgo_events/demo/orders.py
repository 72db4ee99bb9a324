"""The demo's order desk: OpenAlgo's order requests, checked, filled against the position book,
and announced with the events OpenAlgo sends for them.

| request | live mode | analyze mode |
|---|---|---|
| placeorder | ``order_event`` | ``analyzer_update`` |
| placesmartorder, position differs | ``order_event`` for the difference | ``analyzer_update`` |
| placesmartorder, position matches | ``order_notification`` | ``analyzer_update`` |
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..publisher import EventPublisher
from .positions import OrderIds, PositionBook

MATCHED = "Positions Already Matched. No Action needed."
BROKER = "demo"
ACTIONS = ("BUY", "SELL")
PRICE_TYPES = ("MARKET", "LIMIT", "SL", "SL-M")
PRODUCTS = ("MIS", "CNC", "NRML")
MODES = ("live", "analyze")
_SYMBOL = re.compile(r"^[A-Z0-9][A-Z0-9&_.:-]{0,39}$")


class BadRequest(ValueError):
    """A request the desk refuses; the message says which field and why, for a 400 answer."""


@dataclass(frozen=True)
class OrderRequest:
    """An order ticket as OpenAlgo's REST API takes it (``apikey`` excluded)."""

    symbol: str
    action: str
    quantity: int
    exchange: str = "NSE"
    pricetype: str = "MARKET"
    product: str = "MIS"
    price: float = 0.0
    strategy: str = "demo"
    mode: str = "live"
    position_size: int | None = None

    def request_data(self, api_type: str) -> dict[str, Any]:
        """OpenAlgo's ``request_data`` for this order: what ``analyzer_update`` echoes back."""
        data = {k: v for k, v in asdict(self).items() if v is not None and k != "mode"}
        return {**data, "api_type": api_type}


def _choice(body: Mapping[str, Any], name: str, choices: tuple[str, ...], default: str,
            upper: bool = True) -> str:
    raw = body.get(name, default)
    if raw is None or raw == "":
        raise BadRequest(f"{name} is required ({' or '.join(choices)})")
    value = raw.strip().upper() if upper and isinstance(raw, str) else raw
    if value not in choices:
        raise BadRequest(f"{name} must be one of {', '.join(choices)}, not {raw!r}")
    return str(value)


def _whole(body: Mapping[str, Any], name: str, minimum: int | None, default: int | None = None,
           ) -> int:
    raw = body.get(name, default)
    if raw is None:
        raise BadRequest(f"{name} is required")
    if isinstance(raw, str) and re.fullmatch(r"\s*-?\d+\s*", raw):
        value = int(raw)
    elif isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, float) and raw.is_integer():
        value = int(raw)
    else:
        raise BadRequest(f"{name} must be a whole number, not {raw!r}")
    if minimum is not None and value < minimum:
        raise BadRequest(f"{name} must be at least {minimum}, not {value}")
    return value


def _price(body: Mapping[str, Any]) -> float:
    raw = body.get("price", 0)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise BadRequest(f"price must be a number, not {raw!r}") from None
    if isinstance(raw, bool) or not 0 <= value < 1e9:
        raise BadRequest(f"price must be a number from 0, not {raw!r}")
    return value


def _text(body: Mapping[str, Any], name: str, default: str | None = None) -> str:
    raw = body.get(name, default)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise BadRequest(f"{name} is required")
    if not isinstance(raw, str):
        raise BadRequest(f"{name} must be a string, not {raw!r}")
    return raw.strip()


def parse_order(body: Mapping[str, Any], *, smart: bool) -> OrderRequest:
    """Check an order request; raise ``BadRequest`` naming the first bad field."""
    symbol = _text(body, "symbol").upper()
    if not _SYMBOL.match(symbol):
        raise BadRequest(f"symbol {symbol!r} is not a trading symbol (letters, digits, -&_.:)")
    return OrderRequest(
        symbol=symbol,
        action=_choice(body, "action", ACTIONS, ""),
        # A smart order may have quantity 0: it only sets the position size.
        quantity=_whole(body, "quantity", 0 if smart else 1),
        exchange=_text(body, "exchange", "NSE").upper(),
        pricetype=_choice(body, "pricetype", PRICE_TYPES, "MARKET"),
        product=_choice(body, "product", PRODUCTS, "MIS"),
        price=_price(body),
        strategy=_text(body, "strategy", "demo"),
        mode=_choice(body, "mode", MODES, "live", upper=False),
        position_size=_whole(body, "position_size", None) if smart else None,
    )


class OrderDesk:
    """Fills orders against simulated live and sandbox books and publishes what OpenAlgo would.

    >>> from openalgo_events.testing import MemoryTransport
    >>> desk = OrderDesk(EventPublisher(MemoryTransport()))
    >>> desk.place("alice", OrderRequest("SBIN", "BUY", 5))["status"]
    'success'
    """

    def __init__(self, publisher: EventPublisher) -> None:
        self.publisher = publisher
        self.books = {mode: PositionBook() for mode in MODES}
        self.order_ids = OrderIds()

    def place(self, user: str, order: OrderRequest) -> dict[str, Any]:
        """``/api/v1/placeorder``: fill the order and announce it."""
        return self._fill(user, order, order.action, order.quantity, "placeorder")

    def place_smart(self, user: str, order: OrderRequest) -> dict[str, Any]:
        """``/api/v1/placesmartorder``: trade only the difference to ``position_size``."""
        assert order.position_size is not None
        fill = self.books[order.mode].smart_fill(user, order.symbol, order.position_size)
        if fill is not None:
            return self._fill(user, order, fill.action, fill.quantity, "placesmartorder")
        response = {"status": "success", "message": MATCHED}
        if order.mode == "analyze":
            self._analyzed(user, order, "placesmartorder", response)
        else:
            self.publisher.publish_order_notification(user, order.symbol, "info", MATCHED,
                                                      notification_type="position_match")
        return response

    def _fill(self, user: str, order: OrderRequest, action: str, quantity: int,
              api_type: str) -> dict[str, Any]:
        orderid = self.order_ids.next()
        self.books[order.mode].apply(user, order.symbol, action, quantity)
        if order.mode == "analyze":
            return self._analyzed(user, order, api_type, {"status": "success", "orderid": orderid})
        self.publisher.publish_order_event(
            user, order.symbol, action, orderid, "live", exchange=order.exchange,
            price_type=order.pricetype, product_type=order.product, broker=BROKER,
            quantity=quantity, price=order.price,
        )
        return {"status": "success", "orderid": orderid}

    def _analyzed(self, user: str, order: OrderRequest, api_type: str,
                  response: dict[str, Any]) -> dict[str, Any]:
        response = {**response, "mode": "analyze"}
        self.publisher.publish_analyzer_update(user, order.request_data(api_type), response)
        return response

    def positions(self, user: str, mode: str) -> list[dict[str, Any]]:
        return [{"symbol": symbol, "quantity": net, "mode": mode}
                for symbol, net in self.books[mode].of_user(user).items()]
