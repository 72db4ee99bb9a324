"""Socket.IO connection state recovery: nothing missed across a reconnect.

With ``ORDER_EVENT_SOCKETIO_RECOVERY=TRUE`` every event the package emits to browsers carries
its offset (``openalgo_events_offset`` in its payload). A client that reconnects with
``auth={"openalgo_events_offset": <its cursor>}`` gets, in order and before anything new, every
event after it that its rooms entitle it to, then an ``openalgo_events_recovery`` status
(``recovered`` true or false, ``count``, the ``offset`` to keep). SOCKETIO mode recovers from a
bounded in-memory window; KAFKA mode (the bridge) reads older gaps back from the topic, so
recovery survives an app restart and works across app processes.

- ``offsets``: the wire format, and ``Cursor`` (what a Python client keeps).
- ``window``: the recent events in memory.
- ``server``: the connect hook (``Hub``) and the recovery of a socket (``Feed``).
- ``kafka``: reading the topic back (``TopicReader``).
- ``CLIENT_SCRIPT``: the browser helper, ``openalgo-events-recovery.js``.

>>> cursor = Cursor()
>>> client.connect(url, auth=cursor.auth)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from .offsets import AUTH_KEY, PAYLOAD_KEY, REASONS, STATUS_EVENT, Cursor, Position
from .server import RecoveryOptions

CLIENT_SCRIPT = Path(__file__).with_name("openalgo-events-recovery.js")
"""The browser helper: keeps the cursor, sends it on every reconnect, drops events already
shown (served by the Flask extension at ``/openalgo-events/recovery.js``)."""

__all__ = ["AUTH_KEY", "CLIENT_SCRIPT", "PAYLOAD_KEY", "REASONS", "STATUS_EVENT", "Cursor",
           "Position", "RecoveryOptions"]
