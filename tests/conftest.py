"""Shared fixtures: a real broker (Tansu, or the cluster in KAFKA_BOOTSTRAP_SERVERS) and helpers.

Every broker test uses its own topic and consumer group; waits poll with a deadline.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from openalgo_events.devbroker import DevBroker


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a real Kafka-protocol broker for the whole test session."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    with DevBroker() as broker:
        yield broker.bootstrap_servers


@pytest.fixture
def topic() -> str:
    """A fresh topic name for one test."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> object:
    """A clean environment for CLI tests (no KAFKA_*/ORDER_EVENT_* variables, cwd without a
    .env); returns a function that sets variables for the rest of the test."""
    for name in list(os.environ):
        if name.startswith(("KAFKA_", "ORDER_EVENT_", "OPENALGO_EVENTS_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]

    def set_env(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_env
