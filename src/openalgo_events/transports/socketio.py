"""Socket.IO: today's behaviour. The same event names and payload dicts reach the browser.

``publish`` may be called from any thread: a green thread of an eventlet worker, a real OS
thread (a broker feed, our own consumers) or a thread of a threading server. It only appends
to a ``Handoff`` (see ``openalgo_events._handoff``); one task of the Socket.IO server's own kind
(a green thread on the worker's hub under eventlet, a thread otherwise) takes the envelopes in
publish order and makes the emits. So ``publish`` never waits on a client, nothing of the
server is touched from a foreign OS thread, and the order of emits is the order of publishes.

The catalog says which ``data`` fields an event's browser payload carries
(``EventSpec.socketio_payload``): ``password_change`` sends its IP address and user agent to
Kafka only.

With ``recovery`` (``ORDER_EVENT_SOCKETIO_RECOVERY=TRUE``) each payload also carries its offset
in this transport's own sequence, the last events stay in memory, and a socket that reconnects
with its last offset gets what it missed first (``openalgo_events.recovery``). Without it, the
payloads are exactly today's.
"""

from __future__ import annotations

import logging
from typing import Any

from .._handoff import Handoff, eventlet_patched, on_main_thread
from .._hostlog import guard
from .._threads import new_lock, real_sleep, wait_until
from ..catalog import CATALOG
from ..envelope import Envelope
from ..recovery.offsets import socketio_stream
from ..recovery.server import Feed, Hub, RecoveryOptions
from ..stats import Stats

log = logging.getLogger("openalgo_events.socketio")


def user_room(user_id: str) -> str:
    """The room a user's sockets join when events are scoped per user."""
    return f"user:{user_id}"


def browser_payload(envelope: Envelope) -> dict[str, Any]:
    """What browsers receive for ``envelope``: its ``data``, less the fields its catalog entry
    keeps off Socket.IO (``EventSpec.kafka_only``)."""
    spec = CATALOG.get(envelope.event_type)
    return spec.socketio_payload(envelope.data) if spec is not None else dict(envelope.data)


def green_server(socketio: Any) -> bool:
    """Whether ``socketio``'s tasks are eventlet green threads.

    True in async mode ``eventlet``, and also in mode ``threading`` once eventlet has patched
    ``threading``: OpenAlgo's instance says ``async_mode="threading"`` and runs in gunicorn's
    eventlet worker, where its "threads" and queues are green.
    """
    if eventlet_patched():
        return True
    try:
        return str(socketio.server.eio.async_mode) == "eventlet"
    except AttributeError:  # no server yet (init_app not called)
        return False


class SocketIOTransport:
    """Emits ``envelope.data`` as event ``envelope.event_type`` through a Flask-SocketIO server.

    ``scope="broadcast"`` (today's behaviour) reaches every client; ``scope="user"`` reaches
    only the sockets in the user's room (see ``user_room``). Construct it on the app's thread
    (under eventlet, the worker's main thread, where its hub runs): the emit task starts there.

    ``recovery`` turns Socket.IO connection state recovery on (see the module docstring).

    >>> from flask import Flask; from flask_socketio import SocketIO
    >>> transport = SocketIOTransport(SocketIO(Flask(__name__), async_mode="threading"))
    """

    name = "socketio"

    def __init__(self, socketio: Any, *, scope: str = "broadcast", namespace: str = "/",
                 stats: Stats | None = None, recovery: RecoveryOptions | None = None) -> None:
        self.socketio = socketio
        self.scope = scope
        self.namespace = namespace
        self.stats = stats or Stats()
        self._green = green_server(socketio)
        # Envelopes to emit and, with recovery, the joins of connecting sockets: one task, so a
        # join is served in order with the emits.
        self._handoff: Handoff[Any] = Handoff(self._emit, green=self._green,
                                              on_error=self._emit_failed)
        self.recovery: Feed | None = None
        if recovery is not None:
            self.recovery = Feed(Hub.of(socketio, namespace), recovery, self._enqueue,
                                 socketio.emit, stream=socketio_stream(), partitions={0: 1},
                                 green=self._green)
        self._start_lock = new_lock()
        self._started = False
        self._warned = False
        self._emitted = 0
        self._failed = 0
        if self._green:  # publishes from real threads may log: route their records via the hub
            guard()
        self._try_start()

    def _try_start(self) -> bool:
        """Start the emit task, if this thread may: a green task must start on the hub's
        thread (a task spawned on another OS thread's hub never runs)."""
        if self._started:
            return True
        if self._green and not on_main_thread():
            return False
        with self._start_lock:
            if not self._started:
                self._started = True
                self.socketio.start_background_task(self._handoff.run)
        return True

    def publish(self, envelope: Envelope) -> None:
        self._handoff.put(envelope)
        self.stats.add(Stats.event_key("published", envelope.event_type, self.name))
        if not self._started and not self._try_start() and not self._warned:
            self._warned = True
            log.warning("Socket.IO emits wait: this transport was made off the worker's main "
                        "thread, so its emit task starts at the first publish or flush made "
                        "there; build it on the app's thread")

    def _enqueue(self, item: Any) -> bool:
        """Hand a recovery item to the emit task (the current one: ``close`` replaces it)."""
        return self._handoff.put(item)

    def _emit(self, item: Any) -> None:
        if not isinstance(item, Envelope):
            if self.recovery is not None:
                self.recovery.handle(item)
            return
        envelope = item
        room = user_room(envelope.user_id) if self.scope == "user" else None
        if self.recovery is None:
            self.socketio.emit(envelope.event_type, browser_payload(envelope), to=room,
                               namespace=self.namespace)
        else:
            self.recovery.emit(envelope.event_type, browser_payload(envelope), room)
        self._emitted += 1
        self.stats.incr("delivered", event_type=envelope.event_type, transport=self.name)

    def _emit_failed(self, item: Any) -> None:
        if not isinstance(item, Envelope):
            log.exception("Socket.IO recovery step %s failed", type(item).__name__)
            return
        self._failed += 1
        self.stats.incr("failed", event_type=item.event_type, transport=self.name)
        log.exception("Socket.IO emit of %s event %s failed", item.event_type, item.event_id)

    def _sleep(self, seconds: float) -> None:
        if self._green and on_main_thread():
            self.socketio.sleep(seconds)  # yield to the emit task on this hub
        else:
            real_sleep(seconds)

    def flush(self, timeout: float = 5.0) -> int:
        """Wait up to ``timeout`` seconds for the emits; return how many are still queued."""
        self._try_start()
        if self._started:
            wait_until(lambda: self._handoff.pending == 0, timeout, sleep=self._sleep)
        return self._handoff.pending

    def close(self, timeout: float = 5.0) -> int:
        """Flush, then end the emit task; a later ``publish`` starts a new one."""
        left = self.flush(timeout)
        if self.recovery is not None:
            self.recovery.release()  # sockets connecting from now on get live events only
        with self._start_lock:
            old, self._handoff = self._handoff, Handoff(self._emit, green=self._green,
                                                        on_error=self._emit_failed)
            self._started = False
        old.stop()
        return left

    def health(self) -> dict[str, Any]:
        status = {"transport": self.name,
                  "healthy": self._started or not self._handoff.pending,
                  "pending": self._handoff.pending, "emitted": self._emitted,
                  "failed": self._failed, "scope": self.scope}
        if self.recovery is not None:
            status["recovery"] = self.recovery.health()
        return status
