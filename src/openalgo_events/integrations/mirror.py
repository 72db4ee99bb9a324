"""Mirror every Socket.IO emit the app makes into the publisher, with one line of setup.

This reaches what never passes through OpenAlgo's bus: ``master_contract_download``,
``force_logout``, ``active_sessions_update``, ``pending_order_*`` and the services' direct
``analyzer_update``. Rules, in order:

1. ``deny`` names are never mirrored; with ``allow``, only those names are.
2. While the bus adapter is attached in this process, its event types emitted from the bus's
   own threads (OpenAlgo's subscriber showing a toast for a bus event) are skipped: the
   adapter already published that event, with its full fields.
3. A name not in the catalog is skipped (debug log, once per name) unless ``allow`` lists it;
   then a permissive catalog entry is registered for it.

With ``local=False`` (KAFKA mode, where ``KafkaSocketIOBridge`` delivers every broadcast to
the browsers of every process), a broadcast that was published, or skipped by rule 2, is not
emitted locally: the bridge emits it, once. Emits addressed to a room or a socket, and
anything that could not be published, are always emitted locally as the app made them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Mapping
from typing import Any

from ..catalog import CATALOG, EventSpec, Priority, register
from ..config import Settings
from ..envelope import scrub_secrets
from ..errors import ConfigError, EventNotStoredError, EventValidationError
from ..publisher import EventPublisher
from .openalgo import EVENT_TYPES, adapter_attached

log = logging.getLogger("openalgo_events.mirror")

_ORIGINAL = "_openalgo_events_original_emit"
_ADDRESSED = ("to", "room", "skip_sid")
BUS_THREAD_PREFIX = "eventbus"


def original_emit(socketio: Any) -> Callable[..., Any]:
    """The app's own ``emit``, unwrapped: what the bridge calls, so nothing is mirrored twice."""
    emit: Callable[..., Any] = getattr(socketio, _ORIGINAL, None) or socketio.emit
    return emit


def _reaches(transport: Any, socketio: Any, depth: int = 0) -> bool:
    """Whether ``transport`` (or a transport inside it) emits to ``socketio``."""
    if transport is None or depth > 3:
        return False
    if getattr(transport, "socketio", None) is socketio:
        return True
    return any(_reaches(getattr(transport, part, None), socketio, depth + 1)
               for part in ("socketio", "kafka", "transport"))


class EmitMirror:
    """The wrapper installed as ``socketio.emit``; ``remove()`` puts the original back."""

    def __init__(self, socketio: Any, publisher: EventPublisher, *,
                 allow: Collection[str] | None, deny: Collection[str] | None,
                 local: bool | Callable[[], bool],
                 default_user: str, bus_thread_prefix: str) -> None:
        self.socketio = socketio
        self.publisher = publisher
        self.allow = frozenset(allow) if allow is not None else None
        self.deny = frozenset(deny or ())
        self._local = local
        self.default_user = default_user
        self.bus_thread_prefix = bus_thread_prefix
        self._emit = original_emit(socketio)
        self._unknown_seen: set[str] = set()
        self.mirrored = 0
        self.skipped = 0

    def __call__(self, event: str, *args: Any, **kwargs: Any) -> Any:
        addressed = any(kwargs.get(name) for name in _ADDRESSED)
        covered = published = False
        try:
            covered = self._covered_by_adapter(event)
            published = not covered and self._mirror(event, args, kwargs)
        except EventValidationError as exc:
            log.warning("not mirroring the %s emit: %s", event, exc)
        except EventNotStoredError:
            pass  # counted, and logged once per state, by the publisher; emitted locally below
        except Exception:
            log.exception("could not mirror the %s emit", event)
        if self.local or addressed or not (covered or published):
            return self._emit(event, *args, **kwargs)
        return None

    @property
    def local(self) -> bool:
        """Whether broadcasts are emitted here too (False: the bridge emits them)."""
        return self._local() if callable(self._local) else self._local

    def _covered_by_adapter(self, event: str) -> bool:
        return (event in EVENT_TYPES and adapter_attached()
                and threading.current_thread().name.startswith(self.bus_thread_prefix))

    def _wanted(self, event: str) -> bool:
        if event in self.deny or (self.allow is not None and event not in self.allow):
            return False
        if event in CATALOG:
            return True
        if self.allow is not None:  # listed by name: publish it, whatever its fields
            register(EventSpec(event, f"Mirrored Socket.IO emit {event!r}.", (),
                               Priority.MEDIUM))
            return True
        if event not in self._unknown_seen:
            self._unknown_seen.add(event)
            log.debug("not mirroring %s: not in the catalog and not in the allow list", event)
        return False

    def _mirror(self, event: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
        if not self._wanted(event):
            self.skipped += 1
            return False
        payload = args[0] if args else {}
        if not isinstance(payload, Mapping):
            log.debug("not mirroring %s: its payload is a %s, not an object", event,
                      type(payload).__name__)
            self.skipped += 1
            return False
        data = scrub_secrets(payload)  # credentials by meaning, at every depth
        self.publisher.publish(event, self._user_of(kwargs), data)
        self.mirrored += 1
        return True

    def _user_of(self, kwargs: Mapping[str, Any]) -> str:
        room = kwargs.get("to") or kwargs.get("room")
        if isinstance(room, str) and room.startswith("user:"):
            return room.removeprefix("user:")
        return self.default_user

    def remove(self) -> None:
        """Restore the app's own ``emit``."""
        if self.socketio.__dict__.get("emit") is self:
            del self.socketio.emit
            self.socketio.__dict__.pop(_ORIGINAL, None)


def mirror_emits(socketio: Any, publisher: EventPublisher, *,
                 allow: Collection[str] | None = None, deny: Collection[str] | None = None,
                 local: bool | Callable[[], bool] = True, default_user: str | None = None,
                 bus_thread_prefix: str = BUS_THREAD_PREFIX) -> EmitMirror:
    """Wrap ``socketio.emit`` so every emit is also published. One line where the app creates
    its instance: ``mirror_emits(socketio, publisher)``.

    ``local`` (or a callable read at each emit) says whether broadcasts are emitted here too.
    ``publisher`` must not emit to this same ``socketio`` (that would loop): give it a Kafka
    transport. ``default_user`` names the user of emits not addressed to a ``user:`` room.

    >>> socketio = SocketIO(app)  # doctest: +SKIP
    >>> mirror_emits(socketio, EventPublisher(kafka_transport(settings)))  # doctest: +SKIP
    """
    if _reaches(publisher.transport, socketio):
        raise ConfigError(["mirror_emits() was given a publisher that emits to the same "
                           "Socket.IO instance, which would mirror its own emits forever; "
                           "give it a Kafka-only publisher"])
    existing = socketio.__dict__.get("emit")
    if isinstance(existing, EmitMirror):
        existing.remove()
    mirror = EmitMirror(socketio, publisher, allow=allow, deny=deny, local=local,
                        default_user=default_user or Settings().default_user,
                        bus_thread_prefix=bus_thread_prefix)
    setattr(socketio, _ORIGINAL, mirror._emit)
    socketio.emit = mirror
    return mirror
