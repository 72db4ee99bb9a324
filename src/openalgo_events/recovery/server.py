"""Socket.IO connection state recovery, on the server: offsets on emits, and the recovery of
each connecting socket, in order and before anything new.

python-socketio has no recovery of its own and no hook for "a socket connected with this
``auth``" besides the app's one connect handler, which stays the app's. So:

1. ``Hub`` (one per Socket.IO server and namespace) wraps the server's event dispatch once:
   a connecting socket is marked *recovering* before the app's connect handler runs (unmarked
   if the handler refuses it), and once connected its ``Join`` goes to the current ``Feed``.
2. A feed belongs to one emitter, the Socket.IO transport (SOCKETIO and BOTH modes) or the
   Kafka bridge (KAFKA mode), and runs on that emitter's own task. Its emits carry their
   offset and skip the recovering sockets, and those still connecting (python-socketio puts a
   socket in its rooms before the connect handler returns).
3. The feed serves a ``Join`` on that same task, in order with its emits: the events after the
   client's cursor that its rooms entitle it to (the rule live emits follow), from the feed's
   window; what the window no longer holds is read back from the topic first, on a real OS
   thread (KAFKA mode, ``recovery.kafka``). Then the status (``openalgo_events_recovery``),
   then the socket is unmarked: live emits reach it from the next one on. Nothing is missed
   and nothing comes twice or out of order.

Nothing here blocks: a feed's work is in memory, on its emitter's task; reading the topic
happens on the reader's thread and comes back through the emitter's hand-off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import OpenAlgoEventsError
from .offsets import AUTH_KEY, PAYLOAD_KEY, STATUS_EVENT, Cursor, status
from .window import Sent, Window

log = logging.getLogger("openalgo_events.recovery")

_HUBS = "_openalgo_events_recovery_hubs"  # on the python-socketio server: namespace -> Hub
MAX_READS = 3  # topic reads one recovery may need while the window keeps moving on
YIELD_EVERY = 64  # a green feed lets the hub run other green threads every so many resends


@dataclass(frozen=True)
class RecoveryOptions:
    """How much recovery keeps and sends: the window's bounds (``max_events``, ``seconds``);
    ``max_events`` is also the most one recovery sends (a longer gap is not recovered).

    >>> RecoveryOptions(max_events=1000, seconds=60).max_events
    1000
    """

    max_events: int = 5000
    seconds: float = 120.0

    @classmethod
    def from_settings(cls, settings: Any) -> RecoveryOptions | None:
        """The options ``ORDER_EVENT_SOCKETIO_RECOVERY*`` say, or None when recovery is off."""
        if not settings.socketio_recovery:
            return None
        return cls(settings.socketio_recovery_max_events, settings.socketio_recovery_seconds)


@dataclass(eq=False)
class Join:
    """One connecting socket's recovery, from its connect to its status."""

    sid: str
    offset: Any  # auth.openalgo_events_offset as the client sent it (untrusted)
    cursor: Cursor | None = None
    rooms: frozenset[str] = frozenset()
    seen: dict[int, int] = field(default_factory=dict)  # the socket has every event up to here
    found: list[Sent] = field(default_factory=list)  # read back from the topic, in order
    reads: int = 0


@dataclass(eq=False)
class ReadRequest:
    """A stretch of the topic a ``Join`` needs: for each partition ``[first, end)``, and the
    partitions where the client is ahead of this process (``ahead``: its offset, to check
    against the topic). The reader fills in ``found`` (at most ``limit`` events ``rooms``
    entitle to) or ``reason``, and hands the request back."""

    join: Join
    ranges: dict[int, tuple[int, int]]
    ahead: dict[int, int]
    rooms: frozenset[str]
    limit: int
    found: list[Sent] = field(default_factory=list)
    reason: str | None = None


class Reader(Protocol):
    """Reads ``ReadRequest``s back from the topic (``recovery.kafka.TopicReader``)."""

    def submit(self, request: ReadRequest) -> bool: ...


class Hub:
    """The recovering sockets of one Socket.IO server's namespace, and the feed serving them.

    >>> hub = Hub.of(socketio)  # doctest: +SKIP
    """

    def __init__(self, server: Any, namespace: str) -> None:
        self.server = server
        self.namespace = namespace
        self.recovering: set[str] = set()
        self.feed: Feed | None = None
        self.joined = 0
        self._unserved_warned = False

    @classmethod
    def of(cls, socketio: Any, namespace: str = "/") -> Hub:
        """The hub of ``socketio`` (a Flask-SocketIO ``SocketIO`` or a python-socketio
        ``Server``) for ``namespace``, made and hooked in on first use."""
        server = getattr(socketio, "server", socketio)
        if server is None or not callable(getattr(server, "_trigger_event", None)):
            raise OpenAlgoEventsError(
                "Socket.IO recovery needs the app's Socket.IO server: build the publisher (or "
                "the bridge) after SocketIO(app) or socketio.init_app(app)")
        hubs: dict[str, Hub] | None = getattr(server, _HUBS, None)
        if hubs is None:
            hubs = {}
            _hook(server, hubs)
            setattr(server, _HUBS, hubs)
        if namespace not in hubs:
            hubs[namespace] = cls(server, namespace)
        return hubs[namespace]

    # -- called from the server's dispatch (any request thread or green thread) ---------------
    def connect(self, trigger: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """Run the app's connect handler with the socket marked recovering; queue its join."""
        sid = args[0]
        self.recovering.add(sid)
        try:
            result = trigger("connect", self.namespace, *args)
        except BaseException:
            self.recovering.discard(sid)
            raise
        if result is False:
            self.recovering.discard(sid)
            return result
        try:
            auth = args[2] if len(args) > 2 else None
            self._join(Join(sid, auth.get(AUTH_KEY) if isinstance(auth, Mapping) else None))
        except Exception:  # never refuse a connection because of recovery
            self.recovering.discard(sid)
            log.exception("recovery of socket %s could not start; it gets live events only",
                          sid)
        return result

    def _join(self, join: Join) -> None:
        feed = self.feed
        self.joined += 1
        if feed is None or not feed.enqueue(join):
            self.recovering.discard(join.sid)
            if not self._unserved_warned:
                self._unserved_warned = True
                log.warning("a socket connected with recovery on, but no emitter serves "
                            "recovery on namespace %s yet; it gets live events only",
                            self.namespace)

    def forget(self, sid: str) -> None:
        """The socket disconnected: its recovery, if any, is dropped where it stands."""
        self.recovering.discard(sid)

    # -- called from a feed's task ------------------------------------------------------------
    def skip(self) -> list[str] | None:
        """The sockets a feed's emit must skip: recovering or still connecting (None: none)."""
        pending = getattr(self.server.manager, "pending_connect", {}).get(self.namespace)
        if not self.recovering and not pending:
            return None
        # list() of a set or list is one C call under the GIL: no concurrent change seen half
        return list(self.recovering) + (list(pending) if pending else [])

    def rooms(self, sid: str) -> frozenset[str]:
        """The rooms ``sid`` is in (its entitlement: live emits follow the same rule)."""
        for _ in range(5):
            try:
                return frozenset(self.server.rooms(sid, namespace=self.namespace))
            except RuntimeError:  # a room joined or left by another thread while read
                continue
        return frozenset()

    def send(self, sid: str, event: str, payload: Mapping[str, Any]) -> None:
        """Emit to one socket, straight to the Socket.IO server (never through an emit mirror:
        a recovered event must not be published again)."""
        self.server.emit(event, payload, to=sid, namespace=self.namespace)


def _hook(server: Any, hubs: dict[str, Hub]) -> None:
    """Wrap ``server._trigger_event``, the one place where python-socketio hands a connect (with
    its ``auth``) and a disconnect to the app, whatever handlers the app registers, and when."""
    trigger = server._trigger_event

    def dispatch(event: str, namespace: str, *args: Any) -> Any:
        hub = hubs.get(namespace or "/")
        if hub is None:
            return trigger(event, namespace, *args)
        if event == "connect":
            return hub.connect(trigger, args)
        try:
            return trigger(event, namespace, *args)
        finally:
            if event == "disconnect" and args:
                hub.forget(args[0])

    server._trigger_event = dispatch


class Feed:
    """The recovery side of one emitter: offsets on its emits, its window, and the joins of
    connecting sockets. Every method but ``enqueue`` runs on the emitter's own task.

    ``enqueue`` puts an item on the emitter's hand-off (its task hands each back to
    ``handle``); ``emit`` is the emitter's own emit function (``event, payload, to=,
    namespace=, skip_sid=``). ``reader`` reads the topic back (KAFKA mode); without it, a gap
    the window does not hold is not recovered. A feed whose ``stream`` is None waits for
    ``start`` (the bridge, until it is assigned its partitions). ``green``: the emitter's task
    is an eventlet green thread (a long recovery then yields to the hub as it goes).

    Which feed serves the next joins: the one that emitted last; before any emit, the one made
    last, except that a ``primary`` feed (the bridge's: in its process it makes the browser
    emits) is not displaced by one made after it. ``release`` gives the joins up (closing).

    >>> feed = Feed(Hub.of(socketio), RecoveryOptions(), transport_put, socketio.emit,
    ...             stream=socketio_stream(), partitions={0: 1})  # doctest: +SKIP
    """

    def __init__(self, hub: Hub, options: RecoveryOptions, enqueue: Callable[[Any], bool],
                 emit: Callable[..., Any], *, stream: str | None = None,
                 partitions: Mapping[int, int] | None = None,
                 reader: Reader | None = None, green: bool = False,
                 primary: bool = False) -> None:
        self.hub = hub
        self.options = options
        self.enqueue = enqueue
        self._emit = emit
        self.reader = reader
        self.green = green
        self.primary = primary
        self.window = Window(options.max_events, options.seconds)
        self.stream: str | None = None
        self._waiting: list[Join] = []
        self.recovered = 0  # sockets that got every event they missed
        self.not_recovered: dict[str, int] = {}  # by reason
        self.resent = 0  # events sent by recoveries
        if primary or hub.feed is None or not hub.feed.primary:
            hub.feed = self
        if stream is not None:
            self.start(stream, partitions or {0: 1})

    def release(self) -> None:
        """Serve no more joins (the emitter is closing); an emit takes them back."""
        if self.hub.feed is self:
            self.hub.feed = None

    # -- the emitter's task -------------------------------------------------------------------
    def start(self, stream: str, partitions: Mapping[int, int]) -> None:
        """Offsets of ``stream`` from now on; each partition's next offset to be emitted."""
        self.stream = stream
        for partition, next_offset in partitions.items():
            self.window.start(partition, next_offset)
        waiting, self._waiting = self._waiting, []
        for join in waiting:
            self._serve(join)

    def tag(self, event: str, payload: dict[str, Any], room: str | None, partition: int,
            offset: int) -> Sent:
        """``payload`` (a copy the caller owns) with its ``openalgo_events_offset``."""
        payload[PAYLOAD_KEY] = f"{self.stream}:{partition}:{offset}"
        return Sent(partition, offset, event, payload, room, self.window.clock())

    def emit(self, event: str, payload: dict[str, Any], room: str | None, partition: int = 0,
             offset: int | None = None) -> None:
        """Emit ``payload`` (a copy the caller owns) tagged with its offset (the next of this
        feed's sequence when ``offset`` is None), skipping the recovering sockets."""
        if self.hub.feed is not self:
            self.hub.feed = self  # the emitter that emits now serves the next joins
        if offset is None:
            offset = self.window.last.get(partition, 0) + 1
        sent = self.tag(event, payload, room, partition, offset)
        self._emit(event, payload, to=room, namespace=self.hub.namespace,
                   skip_sid=self.hub.skip())
        self.window.add(sent)

    def handle(self, item: Any) -> None:
        """A ``Join`` or a ``ReadRequest`` coming back from the reader."""
        if isinstance(item, Join):
            self._serve(item)
        elif isinstance(item, ReadRequest):
            self._read_back(item)

    def _serve(self, join: Join) -> None:
        if join.sid not in self.hub.recovering:
            return  # disconnected meanwhile
        if self.stream is None:
            self._waiting.append(join)
            return
        if join.cursor is None:
            reason = self._admit(join)
            if reason is not None:
                self._finish(join, False, reason)
                return
        self.window.trim()
        window = self.window
        missing = {p: (seen + 1, window.floor[p]) for p, seen in join.seen.items()
                   if not window.covers(p, seen)}
        ahead = ({p: seen for p, seen in join.seen.items() if seen > window.last[p]}
                 if join.reads == 0 else {})
        if missing or ahead:
            if self.reader is None:
                self._finish(join, False, "too_old" if missing else "unknown_offset")
                return
            join.reads += 1
            request = ReadRequest(join, missing, ahead, join.rooms,
                                  self.options.max_events - len(join.found))
            if join.reads > MAX_READS or not self.reader.submit(request):
                self._finish(join, False, "unavailable")
            return
        events = join.found + [s for s in window.since(join.seen) if s.for_rooms(join.rooms)]
        if len(events) > self.options.max_events:
            self._finish(join, False, "too_many")
            return
        for number, sent in enumerate(events, 1):
            self.hub.send(join.sid, sent.event, sent.payload)
            if self.green and number % YIELD_EVERY == 0:
                import eventlet

                eventlet.sleep(0)  # the worker's requests run; this job stays in the middle
        self.resent += len(events)
        self._finish(join, True, None, len(events))

    def _admit(self, join: Join) -> str | None:
        """Parse the client's cursor; the reason it cannot be recovered, or None."""
        if join.offset is None:
            return "no_offset"
        try:
            cursor = Cursor.parse(join.offset)
        except ValueError:
            return "unknown_offset"
        if cursor.stream != self.stream or set(cursor.offsets) != set(self.window.last):
            return "unknown_offset"
        join.cursor = cursor
        join.seen = dict(cursor.offsets)
        join.rooms = self.hub.rooms(join.sid)
        return None

    def _read_back(self, request: ReadRequest) -> None:
        join = request.join
        if join.sid not in self.hub.recovering:
            return
        if request.reason is not None:
            self._finish(join, False, request.reason)
            return
        join.found.extend(request.found)
        for partition, (_, end) in request.ranges.items():
            join.seen[partition] = end - 1
        self._serve(join)  # the window may have moved on meanwhile: checked again there

    def _finish(self, join: Join, recovered: bool, reason: str | None, count: int = 0) -> None:
        """Send the status with the cursor to adopt, then let live emits reach the socket."""
        offsets = dict(self.window.last)
        client = join.cursor
        if client is None and join.offset is not None:
            try:
                client = Cursor.parse(join.offset)
            except ValueError:
                client = None
        if client is not None and client.stream == self.stream:
            # A client ahead of this process (it came from a faster one) keeps its offsets:
            # the events this process emits later up to there are ones it has shown.
            for partition, offset in client.offsets.items():
                if partition in offsets and offset > offsets[partition]:
                    offsets[partition] = offset
        try:
            self.hub.send(join.sid, STATUS_EVENT,
                          status(recovered, count, Cursor(self.stream, offsets), reason))
        finally:
            self.hub.recovering.discard(join.sid)
        if recovered:
            self.recovered += 1
        elif reason is not None:
            self.not_recovered[reason] = self.not_recovered.get(reason, 0) + 1

    def health(self) -> dict[str, Any]:
        """What recovery holds and has done (counts; safe to show)."""
        return {"stream": self.stream, "window": len(self.window),
                "recovering": len(self.hub.recovering), "waiting": len(self._waiting),
                "recovered": self.recovered, "not_recovered": dict(self.not_recovered),
                "events_resent": self.resent}


__all__ = ["Feed", "Hub", "Join", "ReadRequest", "Reader", "RecoveryOptions"]
