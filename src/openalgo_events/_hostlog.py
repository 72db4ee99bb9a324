"""Our log records reach the host's handlers only from the host's own loop.

In OpenAlgo's eventlet worker the root logger's handlers are created after monkey-patching, so
each holds a green lock; a real OS thread of ours (the bridge's consumer, the inbound
consumer, librdkafka callbacks on them) that logs through them can raise
``greenlet.error: Cannot switch to a different thread`` or block for good (OPENALGO.md
section 8). So, once eventlet has patched ``threading``, ``guard()`` puts one handler of ours on
the ``openalgo_events`` logger and stops that logger's propagation:

- a record made on the hub's OS thread (the main thread: requests, bus callbacks, our green
  tasks) is passed at once to the root logger's handlers, as propagation would have done;
- a record made on any other OS thread has its message formatted there (``args`` emptied, so
  a host filter that stringifies arguments has nothing to break), is appended to a ``Handoff``
  and is passed to the same handlers by a green task on the hub, in the order the records were
  made.

The handler's own lock is never taken (``handle`` is overridden): it shares nothing green with
real threads. The backlog is bounded (``MAX_BACKLOG``); records beyond it are counted and one
warning says how many were dropped. Without eventlet nothing is installed: real threads and
real handler locks mix fine.

Fork: gunicorn's eventlet worker class monkey-patches at import, in the master, so the master
(whose relay supervisor starts a real thread) installs the hand-off too, and its workers are
forked from it. A forked child gets the handler with the parent's green task marked started,
though that task lives on the parent's hub, and a wake-up pipe it shares with the parent: its
real threads' records would wait until the worker exits. So the child forgets the parent's
hand-off at fork (``os.register_at_fork``) and starts its own task on its own hub at the next
``guard()`` or record from the hub's thread. The master itself never runs its hub (it waits
in gunicorn's own loop): the hook calls ``forward_directly_here()`` there, so the relay
supervisor's records are passed on at once, on its thread.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ._handoff import Handoff, eventlet_patched, on_main_thread
from ._threads import new_lock

LOGGER = "openalgo_events"
MAX_BACKLOG = 10_000

_lock = new_lock()
_handler: HubLogHandler | None = None
_DIRECT: set[int] = set()  # pids of processes whose main thread runs no hub (forward directly)


def _forward(record: logging.LogRecord) -> None:
    """Pass ``record`` on as propagation from our logger would: to the root's handlers."""
    parent = logging.getLogger(LOGGER).parent
    if parent is not None:
        parent.callHandlers(record)


def _render(record: logging.LogRecord) -> None:
    """Format the message now, on the thread that made it: the record then holds no reference
    to live objects while it waits, and the host's filters see plain text (``args`` empty)."""
    try:
        record.msg = record.getMessage()
        record.args = ()
    except Exception:  # a bad format string: leave it to the host's handler to report
        pass


class HubLogHandler(logging.Handler):
    """Forwards records on the hub's thread; hands the others to a green task on the hub."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.handoff: Handoff[logging.LogRecord] = Handoff(
            self._forward_and_report, green=True, maxlen=MAX_BACKLOG)
        self._reported_drops = 0
        self.started = False

    def createLock(self) -> None:
        self.lock: Any = new_lock()  # never a green lock; ``handle`` below does not take it

    def handle(self, record: logging.LogRecord) -> bool:
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        if os.getpid() in _DIRECT:  # no hub runs here: forward on the caller's thread
            _forward(record)
            return
        if on_main_thread():
            self.start()
            self._report_drops()
            if not self.handoff.pending:
                _forward(record)
                return
        if not on_main_thread():
            _render(record)
        self.handoff.put(record)  # behind earlier records from real threads: keep their order

    def start(self) -> None:
        """Start the green task (on the hub's thread only; elsewhere it would never run)."""
        if self.started or not on_main_thread() or os.getpid() in _DIRECT:
            return
        self.started = True
        import eventlet

        eventlet.spawn(self._run)

    def _run(self) -> None:
        self.handoff.run()

    def _forward_and_report(self, record: logging.LogRecord) -> None:
        self._report_drops()
        _forward(record)

    def _report_drops(self) -> None:
        dropped = self.handoff.dropped
        if dropped > self._reported_drops:
            self._reported_drops = dropped
            record = logging.LogRecord(
                LOGGER, logging.WARNING, __file__, 0,
                "openalgo-events dropped %s log records from its background threads "
                "(over %s waiting for the worker's loop)", (dropped, MAX_BACKLOG), None)
            _forward(record)

    def reset_in_child(self) -> None:
        """In a forked child: a hand-off of its own, its task not yet started (see above)."""
        self.handoff.reset_in_child()
        self._reported_drops = 0
        self.started = False

    def drain(self) -> int:
        """Forward the backlog now (on the hub's thread only, e.g. at worker exit)."""
        return self.handoff.drain() if on_main_thread() else 0


def guard() -> HubLogHandler | None:
    """Install the hand-off if eventlet has patched ``threading``; idempotent.

    Call it from the hub's thread before starting a real thread (``_threads.start_thread``
    does). Returns the handler, or None when no hand-off is needed.
    """
    global _handler
    if not eventlet_patched():
        return None
    with _lock:
        if _handler is None:
            handler = HubLogHandler()
            logger = logging.getLogger(LOGGER)
            logger.addHandler(handler)
            logger.propagate = False
            _handler = handler
    _handler.start()
    return _handler


def forward_directly_here() -> None:
    """Declare that this process's main thread never runs eventlet's hub, though ``threading``
    is patched: gunicorn's master, which the eventlet worker class patches at import and which
    then waits in its own (unpatched) loop. A green task there would never run, so records of
    our real threads (the relay supervisor's) would wait until exit; here they are passed to
    the root's handlers on the thread that made them, as without eventlet. Processes forked
    from this one (the workers) are not affected: their hub runs the hand-off's task."""
    _DIRECT.add(os.getpid())


def _after_fork_in_child() -> None:
    global _lock
    _lock = new_lock()  # another thread of the parent may have held it at the fork
    if _handler is not None:
        _handler.reset_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def drain() -> int:
    """Forward any queued records now, if the hand-off is installed and this is the hub's
    thread; return how many."""
    return _handler.drain() if _handler is not None else 0
