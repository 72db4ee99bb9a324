"""Recovery's wire format and its in-memory window, without a server: offsets and cursors
parse strictly (a client's auth is untrusted), a cursor drops what it has seen and never moves
back, and the window keeps what its bounds say and knows what it no longer covers."""

from __future__ import annotations

import re

import pytest

from openalgo_events.recovery import AUTH_KEY, Cursor, Position
from openalgo_events.recovery.offsets import (
    MAX_CURSOR_CHARS,
    kafka_stream,
    socketio_stream,
    status,
)
from openalgo_events.recovery.window import Sent, Window


def test_a_position_prints_and_parses_back():
    """An event's offset is stream:partition:offset and parses back to the same position."""
    position = Position("k0123abcd", 3, 1234)
    assert str(position) == "k0123abcd:3:1234"
    assert Position.parse(str(position)) == position


@pytest.mark.parametrize("text", [
    None, 17, "", "k0123abcd:3", "k0123abcd:3:x", "K0123ABCD:3:1", "k0123abcd:-1:5",
    "k0123abcd:3:-2", "k0123abcd:99999999999:1", "k0123abcd:1:99999999999999999999",
    "k0123abcd:1:1 ", "zz:1:1", "k0123abcd:1:1:1", "k" + "0" * 60 + ":1:1",
])
def test_a_malformed_position_is_none(text):
    """Anything but stream:partition:offset within their ranges is not a position."""
    assert Position.parse(text) is None


@pytest.mark.parametrize("text", [
    None, 5, "", "k0123abcd:0:1,", "k0123abcd:0:1,k0123abcd:0:2", "k0123abcd:0:1,s0123abcd:1:2",
    "k0123abcd:0:1," * 5000, "k0123abcd:0:" + "1" * MAX_CURSOR_CHARS, {"k": "v"},
])
def test_a_malformed_cursor_is_refused(text):
    """A cursor of the wrong type, too long, with a bad item, a partition twice or two streams
    raises ValueError (the server answers unknown_offset)."""
    with pytest.raises(ValueError):
        Cursor.parse(text)


def test_a_cursor_accepts_each_event_once_and_starts_over_on_a_new_stream():
    """accept() is False for an offset at or before the partition's last, True for a later one,
    for an event without offset, and for an event of another stream, which restarts it."""
    cursor = Cursor.parse("k0123abcd:0:5,k0123abcd:1:-1")
    assert cursor.accept({AUTH_KEY: "k0123abcd:1:0"})
    assert not cursor.accept({AUTH_KEY: "k0123abcd:1:0"})
    assert not cursor.accept({AUTH_KEY: "k0123abcd:0:4"})
    assert cursor.accept({"symbol": "SBIN"}) and cursor.accept(["not", "a", "dict"])
    assert str(cursor) == "k0123abcd:0:5,k0123abcd:1:0"
    assert cursor.accept({AUTH_KEY: "s89abcdef:0:1"})
    assert str(cursor) == "s89abcdef:0:1"


def test_adopting_a_status_moves_forward_only_and_auth_sends_the_cursor():
    """adopt() of the same stream keeps the larger offset of each partition; of another stream
    it replaces the cursor; garbage is ignored; auth() is empty until a stream is known."""
    cursor = Cursor()
    assert cursor.auth() == {}
    cursor.adopt("k0123abcd:0:5,k0123abcd:1:7")
    cursor.adopt("k0123abcd:0:9,k0123abcd:1:3")
    assert cursor.auth() == {AUTH_KEY: "k0123abcd:0:9,k0123abcd:1:7"}
    cursor.adopt("not a cursor")
    cursor.adopt("s89abcdef:0:2")
    assert str(cursor) == "s89abcdef:0:2"


def test_streams_are_stable_for_a_topic_and_new_for_each_socketio_sequence():
    """Every process reading one topic of one cluster names the same stream; another cluster
    or topic, and each Socket.IO sequence, gets another."""
    assert kafka_stream("cluster-1", "orders") == kafka_stream("cluster-1", "orders")
    assert kafka_stream("cluster-2", "orders") != kafka_stream("cluster-1", "orders")
    assert kafka_stream("cluster-1", "orders").startswith("k")
    assert socketio_stream() != socketio_stream()
    assert Position.parse(f"{socketio_stream()}:0:1") is not None


def test_the_status_names_its_reason_only_when_not_recovered():
    """The status carries recovered, count and offset, and reason when it says why not."""
    cursor = Cursor.parse("s89abcdef:0:3")
    assert status(True, 2, cursor) == {"recovered": True, "count": 2, "offset": "s89abcdef:0:3"}
    assert status(False, 0, cursor, "too_old")["reason"] == "too_old"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sent(window: Window, partition: int, offset: int, room: str | None = None) -> Sent:
    return Sent(partition, offset, "order_event", {"n": offset}, room, window.clock())


def test_the_window_keeps_the_last_events_by_count():
    """Past max_events the oldest event goes, and the partition's floor moves past it."""
    window = Window(max_events=3, max_seconds=60, clock=Clock())
    window.start(0, 1)
    for n in range(1, 6):
        window.add(sent(window, 0, n))
    assert len(window) == 3 and window.floor[0] == 3 and window.last[0] == 5
    assert window.covers(0, 2) and not window.covers(0, 1)
    assert [s.offset for s in window.since({0: 3})] == [4, 5]


def test_the_window_drops_events_older_than_its_age_even_when_quiet():
    """An event older than max_seconds is no longer held: trimmed by the next add, or by a
    read with nothing added since."""
    clock = Clock()
    window = Window(max_events=100, max_seconds=10, clock=clock)
    window.start(0, 1)
    window.add(sent(window, 0, 1))
    clock.now += 5
    window.add(sent(window, 0, 2))
    clock.now += 6
    window.trim()
    assert [s.offset for s in window.since({0: 0})] == [2]
    assert not window.covers(0, 0) and window.covers(0, 1)
    clock.now += 20
    window.trim()
    assert len(window) == 0 and window.covers(0, 2) and not window.covers(0, 1)


def test_the_window_follows_each_partition_and_the_rule_of_rooms():
    """Floors are per partition; since() leaves out partitions not asked for; an event for a
    room reaches only sockets in it, a broadcast reaches all."""
    window = Window(max_events=2, max_seconds=60, clock=Clock())
    window.start(0, 10)
    window.start(1, 20)
    assert window.covers(0, 9) and not window.covers(0, 8) and window.last == {0: 9, 1: 19}
    window.add(sent(window, 0, 10, "user:alice"))
    window.add(sent(window, 1, 20))
    window.add(sent(window, 1, 21, "user:bob"))
    assert window.floor == {0: 11, 1: 20}
    assert [s.offset for s in window.since({1: 19})] == [20, 21]
    alice = frozenset({"sid1", "user:alice"})
    assert [s.offset for s in window.since({0: 9, 1: 19}) if s.for_rooms(alice)] == [20]


def test_recovery_without_the_apps_socketio_server_stops_start_up_with_the_fix():
    """A Flask-SocketIO instance not yet bound to its app has no server to hook: building a
    transport with recovery on raises, saying to build it after init_app."""
    from flask_socketio import SocketIO

    from openalgo_events import OpenAlgoEventsError
    from openalgo_events.recovery import RecoveryOptions
    from openalgo_events.transports.socketio import SocketIOTransport

    fix = re.escape("after SocketIO(app) or socketio.init_app(app)")
    with pytest.raises(OpenAlgoEventsError, match=fix):
        SocketIOTransport(SocketIO(), recovery=RecoveryOptions())
