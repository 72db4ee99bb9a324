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
