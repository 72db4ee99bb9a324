"""The emit mirror on a real Flask-SocketIO server (in-process test client)."""

from __future__ import annotations

import threading

import pytest
from flask import Flask
from flask_socketio import SocketIO

from openalgo_events import ConfigError, EventPublisher, MemoryTransport
from openalgo_events.integrations.mirror import mirror_emits, original_emit
from openalgo_events.integrations.openalgo import attach
from openalgo_events.publisher import SocketIOEventPublisher
from tests.doubles.event_bus import EventBus


@pytest.fixture
def setup():
    app = Flask(__name__)
    socketio = SocketIO(app, async_mode="threading")
    memory = MemoryTransport()
    client = socketio.test_client(app)
    yield socketio, EventPublisher(memory), memory, client
    client.disconnect()


def _received(client, name):
    return [r["args"][0] for r in client.get_received() if r["name"] == name]


def test_master_contract_download_is_mirrored(setup):
    """A master_contract_download emit still reaches the browser and is published once, as
    the system user's event with its payload."""
    socketio, publisher, memory, client = setup
    mirror_emits(socketio, publisher)
    socketio.emit("master_contract_download", {"status": "success", "message": "Downloaded"})
    assert _received(client, "master_contract_download") == [
        {"status": "success", "message": "Downloaded"}]
    [envelope] = memory.events
    assert envelope.event_type == "master_contract_download"
    assert envelope.user_id == "admin"
    assert envelope.data == {"status": "success", "message": "Downloaded"}


def test_bus_toasts_are_left_to_the_adapter(setup):
    """With the adapter attached, an adapter event type emitted from a bus thread is not
    mirrored; the same name emitted elsewhere (a direct analyzer_update) is."""
    socketio, publisher, memory, client = setup
    bus = EventBus()
    attachment = attach(bus, EventPublisher(MemoryTransport()))
    try:
        mirror_emits(socketio, publisher)
        payload = {"request": {"symbol": "SBIN"}, "response": {"status": "success"}}
        bus_thread = threading.Thread(target=socketio.emit, args=("analyzer_update", payload),
                                      name="eventbus_7")
        bus_thread.start()
        bus_thread.join()
        socketio.emit("analyzer_update", payload)
    finally:
        attachment.detach()
    assert len(_received(client, "analyzer_update")) == 2
    assert [e.event_type for e in memory.events] == ["analyzer_update"]


def test_allow_deny_and_unknown_names(setup):
    """Denied and unknown names are not published; an unknown name in the allow list is."""
    socketio, publisher, memory, _ = setup
    mirror_emits(socketio, publisher, deny={"force_logout"})
    socketio.emit("force_logout", {"message": "bye"})
    socketio.emit("market_tick", {"ltp": 1})
    assert memory.events == []
    mirror_emits(socketio, publisher, allow={"market_tick"})
    socketio.emit("market_tick", {"ltp": 1})
    socketio.emit("force_logout", {"message": "bye"})
    assert [e.event_type for e in memory.events] == ["market_tick"]


def test_secrets_are_scrubbed_and_user_rooms_name_the_user(setup):
    """A secret key in an emitted payload is dropped before publishing, and an emit to a
    user's room is published as that user's event."""
    socketio, publisher, memory, _ = setup
    mirror_emits(socketio, publisher)
    socketio.emit("force_logout", {"message": "bye", "apikey": "k-123456789", "password": "p"},
                  to="user:alice")
    [envelope] = memory.events
    assert envelope.user_id == "alice"
    assert envelope.data == {"message": "bye"}


def test_redirect_mode_leaves_broadcasts_to_the_bridge(setup):
    """With local=False a published broadcast is not emitted locally, while an addressed emit
    or an unpublishable one still is."""
    socketio, publisher, memory, client = setup
    mirror_emits(socketio, publisher, local=False)
    socketio.emit("master_contract_download", {"status": "success", "message": "done"})
    socketio.emit("chart_refresh", {"ltp": 1})
    socketio.emit("master_contract_download", {"status": "error"})  # no message: invalid
    sid = next(iter(socketio.server.manager.rooms["/"][None]))
    socketio.emit("force_logout", {"message": "bye"}, to=sid)
    names = [r["name"] for r in client.get_received()]
    assert names == ["chart_refresh", "master_contract_download", "force_logout"]
    assert [e.event_type for e in memory.events] == ["master_contract_download", "force_logout"]


def test_refuses_a_publisher_that_emits_to_the_same_server(setup):
    """A publisher emitting to the mirrored server would loop, so it is refused; remove()
    restores the original emit."""
    socketio, publisher, _, _ = setup
    with pytest.raises(ConfigError):
        mirror_emits(socketio, SocketIOEventPublisher(socketio))
    mirror = mirror_emits(socketio, publisher)
    assert original_emit(socketio) != socketio.emit
    mirror.remove()
    assert "emit" not in vars(socketio)
