"""The reference app: ``openalgo-events demo`` (or ``scripts/demo``) serves it."""

from __future__ import annotations

from .app import DEMO_API_KEY, DEMO_USER, DemoState, create_app, demo_state
from .server import DemoServer

__all__ = ["DEMO_API_KEY", "DEMO_USER", "DemoServer", "DemoState", "create_app", "demo_state"]
