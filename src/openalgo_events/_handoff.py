"""A FIFO any OS thread may put into, drained by one task on the host's own loop.

Under eventlet every green primitive (queue, event, lock, a Socket.IO server's queues) belongs
to the hub of one OS thread: a put from another OS thread does not wake that hub, and a wait
there raises ``greenlet.error`` or blocks for good. So code of ours on a real thread never
touches them; it calls ``Handoff.put``, which appends to a ``deque`` (atomic in CPython) and
wakes the loop through a pipe, the way ``eventlet.tpool`` wakes the hub from its workers: one
``write(2)`` is safe from any thread, and the hub waits on the read end like on any socket.

Without eventlet (Flask-SocketIO's threading mode, plain Python) the drain task is a real
thread woken by a real ``threading.Event``.

Order: one deque and one drainer, so items are delivered in the order of the ``put`` calls.
"""

from __future__ import annotations

import _thread
import collections
import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ._threads import _original, new_event, new_lock, real_threading

T = TypeVar("T")
WAKE_TIMEOUT = 1.0  # seconds a drainer sleeps without a wake-up before it checks for stop
# A green drainer yields to the hub after this many deliveries: a burst (the bridge gets a
# consumer batch of hundreds) must not hold the worker's requests back for the whole backlog.
YIELD_EVERY = 16


def eventlet_patched() -> bool:
    """Whether ``threading`` is monkey-patched by eventlet (OpenAlgo's production worker)."""
    if "eventlet" not in sys.modules:
        return False
    from eventlet import patcher

    return bool(patcher.is_monkey_patched("thread"))


def os_thread_id() -> int:
    """The calling OS thread's id, never a green thread's (patched, ``get_ident`` is a
    greenlet's)."""
    if eventlet_patched():
        from eventlet import patcher

        ident: int = patcher.original("_thread").get_ident()
        return ident
    return _thread.get_ident()


def on_main_thread() -> bool:
    """Whether the caller runs on the process's main OS thread (where the worker's hub runs)."""
    main: int | None = real_threading().main_thread().ident
    return os_thread_id() == main


class Handoff(Generic[T]):
    """Items put from any thread, delivered one at a time by ``run`` on the loop, in order.

    ``green=True``: ``run`` is a green task on an eventlet hub (start it with the Socket.IO
    server's ``start_background_task`` or ``eventlet.spawn`` from that hub's thread).
    ``green=False``: ``run`` is a real thread. ``maxlen`` bounds the backlog: a put beyond it
    is refused (``put`` returns False) and counted in ``dropped``.

    >>> box = Handoff(print, green=False)
    >>> box.put("hello")
    True
    """

    def __init__(self, deliver: Callable[[T], None], *, green: bool,
                 maxlen: int | None = None, on_error: Callable[[T], None] | None = None) -> None:
        self._deliver = deliver
        self._on_error = on_error
        self.green = green
        self.maxlen = maxlen
        self._items: collections.deque[T] = collections.deque()
        self._count_lock = new_lock()  # real: taken from real threads and green tasks alike
        self.put_count = 0
        self.done_count = 0
        self.dropped = 0
        self._stopping = False
        self.running = False
        if green:
            self._open_pipe()
            # eventlet's green os.read/os.write would wait on the hub on EAGAIN: use the originals
            self._write = _original("os").write
            self._read = _original("os").read
            self._event: Any = None
        else:
            self._event = new_event()

    def _open_pipe(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)

    def reset_in_child(self) -> None:
        """Forget the parent's state in a forked child (call it from an ``after_in_child`` fork
        hook, when the forking thread is the only one): its backlog (the parent delivers it),
        its counters, its running flag (the parent's task does not exist here) and, if green,
        its wake-up pipe, shared with the parent after a fork (a put here would wake the
        parent's drainer, and the parent's drainer would eat this process's wake-ups)."""
        self._items.clear()
        self._count_lock = new_lock()
        self.put_count = self.done_count = self.dropped = 0
        self._stopping = False
        self.running = False
        if self.green:
            for fd in (self._read_fd, self._write_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._open_pipe()
        else:
            self._event = new_event()

    # -- any thread ---------------------------------------------------------------------------
    def put(self, item: T) -> bool:
        """Queue ``item``; never blocks and never touches a green primitive."""
        with self._count_lock:
            if self.maxlen is not None and self.put_count - self.done_count >= self.maxlen:
                self.dropped += 1
                return False
            self.put_count += 1
            self._items.append(item)
        self._wake()
        return True

    def _wake(self) -> None:
        if self.green:
            # A full pipe (BlockingIOError) means the reader is being woken already.
            with contextlib.suppress(OSError):
                self._write(self._write_fd, b"\0")
        else:
            self._event.set()

    @property
    def pending(self) -> int:
        """Items put and not yet delivered."""
        return self.put_count - self.done_count

    def stop(self) -> None:
        """Ask ``run`` to return once the backlog is delivered."""
        self._stopping = True
        self._wake()

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        """Deliver items until ``stop``; run once, as the loop's task."""
        self.running = True
        try:
            while True:
                self._wait()
                self.drain()
                if self._stopping:
                    return
        finally:
            # The pipe stays open: a late put from another thread must never write into a
            # closed descriptor that the process may have reused for something else.
            self.running = False

    def _wait(self) -> None:
        if self.green:
            from eventlet import hubs
            from eventlet.timeout import Timeout

            if not self._items and not self._stopping:
                with contextlib.suppress(Timeout):
                    hubs.trampoline(self._read_fd, read=True, timeout=WAKE_TIMEOUT)
            # Read the wake-ups before draining, so a later put leaves a byte behind.
            with contextlib.suppress(OSError):
                while self._read(self._read_fd, 4096):
                    pass
        else:
            self._event.wait(WAKE_TIMEOUT)
            self._event.clear()

    def drain(self) -> int:
        """Deliver what is queued now, on the caller's thread; return how many. Green, it lets
        the hub run other green threads every ``YIELD_EVERY`` deliveries (order is kept: one
        item is taken and delivered at a time)."""
        done = 0
        while self._items:
            if self.green and done and done % YIELD_EVERY == 0:
                import eventlet

                eventlet.sleep(0)
            item = self._items.popleft()
            try:
                self._deliver(item)
            except Exception:
                if self._on_error is not None:
                    self._on_error(item)
            finally:
                with self._count_lock:
                    self.done_count += 1
                done += 1
        return done
