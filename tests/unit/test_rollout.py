"""KAFKA_ROLLOUT_PERCENT: a stable share of users, by hash of user id, goes to Kafka."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from openalgo_events import EventPublisher
from openalgo_events.config import Mode
from openalgo_events.testing import MemoryTransport
from openalgo_events.transports.routing import Route, RoutingTransport, in_rollout

USERS = [f"user-{i}" for i in range(10_000)]


@pytest.mark.parametrize("percent", [10, 50, 90])
def test_share_within_two_points(percent):
    """Over 10,000 user ids the share in the rollout is within 2 points of the setting."""
    share = 100 * sum(in_rollout(u, percent) for u in USERS) / len(USERS)
    assert abs(share - percent) <= 2, share


def test_edges_take_nobody_or_everybody():
    """0% puts nobody on Kafka, 100% everybody."""
    assert not any(in_rollout(u, 0) for u in USERS)
    assert all(in_rollout(u, 100) for u in USERS)


def test_growing_the_share_keeps_users_already_on_kafka():
    """Raising 10% to 50% only adds users: nobody moves back to Socket.IO."""
    ten = {u for u in USERS if in_rollout(u, 10)}
    fifty = {u for u in USERS if in_rollout(u, 50)}
    assert ten < fifty


def test_stable_across_processes():
    """A fresh interpreter (another hash seed) picks exactly the same users."""
    code = ("import json; from openalgo_events.transports.routing import in_rollout; "
            "print(json.dumps([u for u in (f'user-{i}' for i in range(10_000)) "
            "if in_rollout(u, 10)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60, env={"PYTHONHASHSEED": "12345"})
    assert json.loads(out.stdout) == [u for u in USERS if in_rollout(u, 10)]


@pytest.mark.parametrize(("mode", "inside", "outside"), [
    (Mode.KAFKA, {"kafka"}, {"socketio"}),
    (Mode.BOTH, {"kafka", "socketio"}, {"socketio"}),
    (Mode.SOCKETIO, {"socketio"}, {"socketio"}),
])
def test_routing_transport_routes_by_rollout(mode, inside, outside):
    """Users in the share go to Kafka (and Socket.IO in BOTH mode); the rest stay on Socket.IO."""
    sio, kafka = MemoryTransport(), MemoryTransport()
    sio.name, kafka.name = "socketio", "kafka"
    publisher = EventPublisher(RoutingTransport(Route(mode, 30), socketio=sio, kafka=kafka))
    users = USERS[:500]
    for user in users:
        publisher.publish("force_logout", user, message="bye")
    for user in users:
        want = inside if in_rollout(user, 30) else outside
        got = {t.name for t in (sio, kafka) if any(e.user_id == user for e in t.events)}
        assert got == want, user
    assert 0 < len(kafka.events) < len(users) or mode is Mode.SOCKETIO
