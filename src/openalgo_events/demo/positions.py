"""A simulated position book: net quantity per user and symbol, one book per mode.

OpenAlgo keeps live positions at the broker and sandbox positions in its analyzer; the demo
keeps both in memory, so that a smart order can find its position already matched.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

from .._threads import new_lock


@dataclass(frozen=True)
class Fill:
    """What a smart order asks for: the order that brings the position to its target."""

    action: str
    quantity: int


class PositionBook:
    """Net positions by (user, symbol); BUY adds, SELL subtracts.

    >>> book = PositionBook()
    >>> book.apply("alice", "SBIN", "BUY", 10)
    10
    >>> book.smart_fill("alice", "SBIN", 4)
    Fill(action='SELL', quantity=6)
    >>> book.smart_fill("alice", "SBIN", 10) is None
    True
    """

    def __init__(self) -> None:
        self._positions: dict[tuple[str, str], int] = {}
        self._lock = new_lock()

    def position(self, user: str, symbol: str) -> int:
        with self._lock:
            return self._positions.get((user, symbol), 0)

    def apply(self, user: str, symbol: str, action: str, quantity: int) -> int:
        """Book a filled order; returns the new net position."""
        signed = quantity if action == "BUY" else -quantity
        with self._lock:
            net = self._positions.get((user, symbol), 0) + signed
            self._positions[(user, symbol)] = net
            return net

    def smart_fill(self, user: str, symbol: str, target: int) -> Fill | None:
        """The order that makes the net position ``target``, or None when it already is."""
        difference = target - self.position(user, symbol)
        if difference == 0:
            return None
        return Fill("BUY" if difference > 0 else "SELL", abs(difference))

    def of_user(self, user: str) -> dict[str, int]:
        with self._lock:
            return {symbol: net for (owner, symbol), net in sorted(self._positions.items())
                    if owner == user}


class OrderIds:
    """Order ids shaped like a broker's: a timestamp prefix and a per-process counter."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._lock = new_lock()

    def next(self) -> str:
        with self._lock:
            return f"{time.strftime('%y%m%d%H%M%S')}{next(self._counter):04d}"
