"""The keeper: a small process that runs the relay as its child and starts it again when it dies.

``python -m openalgo_events.relay --keep ...`` holds ``keeper.lock`` (one keeper per spool),
runs the relay with the same arguments, and reaps it itself, so its log says how the relay
ended (a signal, such as the OOM killer's SIGKILL, or an exit status) under its own name, never
taken for someone else's worker. A relay that dies is started again after a backoff (0.5 s
doubling to 10 s; reset once one has run for 30 s); one that cannot use its spool or its
settings (exit status 78, its message says why) after a longer one (5 s doubling to 60 s), and
a keeper started for a publisher gives up after ten minutes of that (the publisher's watch
starts another once the cause is fixed). A relay that exits 0 (idle, or stopped) or 3 (another
relay serves the spool) ends the keeper too, unless events arrived as the relay went idle
(``_hand_over``).

SIGTERM and SIGINT are passed on to the relay, and the keeper exits with its status once it has
stopped. With ``--watch-parent`` (gunicorn's master starts it so), the keeper tells the relay
to exit once idle (SIGUSR1) when its parent dies. It imports nothing heavy: librdkafka lives
in the relay.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from ..errors import SpoolError
from ..spool import Spool
from ..spool import format as fmt
from ..spool.directory import SpoolDirectory, posix_lock
from .process import EXIT_HELD, EXIT_OK, EXIT_UNUSABLE

log = logging.getLogger("openalgo_events.relay")

GIVE_UP_UNUSABLE_AFTER = 600.0  # seconds of "cannot use the spool" before a publisher's keeper
STAYED_UP = 30.0  # seconds a relay must run before its next failure counts as a new one


def describe(status: int) -> str:
    """How a child ended, from ``os.waitpid``'s status."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        hint = " (the OOM killer, or kill -9)" if number == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    code = os.waitstatus_to_exitcode(status)
    meaning = {EXIT_OK: "done", EXIT_HELD: "another relay holds the spool",
               EXIT_UNUSABLE: "cannot use its spool or settings"}.get(code, "crashed")
    return f"exited with status {code} ({meaning})"


class Keeper:
    """Runs ``relay_args`` (the relay's command-line arguments) until they are done."""

    def __init__(self, spool_path: str, relay_args: list[str], *, watch_parent: bool,
                 for_publisher: bool) -> None:
        self.spool_path = spool_path
        self.relay_args = relay_args
        self.watch_parent = watch_parent
        self.for_publisher = for_publisher
        self._stopping = False
        self._child: subprocess.Popen[bytes] | None = None
        self._parent = os.getppid()

    def run(self) -> int:
        try:
            spool = SpoolDirectory(self.spool_path, create=True)
            lock_fd = spool.open(fmt.KEEPER_LOCK, os.O_RDWR, create=True)
        except (OSError, SpoolError) as exc:
            log.error("keeper: cannot use spool %s: %s", self.spool_path, exc)
            return EXIT_UNUSABLE
        if not posix_lock(lock_fd):
            log.info("keeper: another keeper holds spool %s; exiting", self.spool_path)
            return EXIT_OK
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        backoff, unusable_since, previous = 0.5, None, None
        while True:
            started = time.monotonic()
            pid, status = self._run_relay()
            how = describe(status)
            code = os.waitstatus_to_exitcode(status)
            if self._stopping or code == EXIT_HELD:
                log.info("keeper: the relay (pid %s) %s; the keeper exits", pid, how)
                return code if self._stopping else EXIT_OK
            if code == EXIT_OK:  # idle: it found nothing to send
                again = self._hand_over(spool, lock_fd)
                if again is None:
                    log.info("keeper: the relay (pid %s) %s; the keeper exits", pid, how)
                    return EXIT_OK
                lock_fd = again
                log.info("keeper: events arrived as the relay (pid %s) went idle; starting it "
                         "again", pid)
                continue
            if code == EXIT_UNUSABLE:
                unusable_since = unusable_since or time.monotonic()
                if self.for_publisher and (
                        time.monotonic() - unusable_since > GIVE_UP_UNUSABLE_AFTER):
                    log.error("keeper: the relay still cannot use spool %s after %s s; giving "
                              "up (a publisher starts another keeper once it publishes)",
                              self.spool_path, GIVE_UP_UNUSABLE_AFTER)
                    return EXIT_UNUSABLE
                backoff = 5.0 if previous != EXIT_UNUSABLE else min(backoff * 2, 60.0)
            elif time.monotonic() - started > STAYED_UP or previous in (None, EXIT_UNUSABLE):
                unusable_since, backoff = None, 0.5
            else:
                backoff = min(backoff * 2, 10.0)
            previous = code
            log.error("keeper: the relay (pid %s) %s; starting it again in %s s", pid, how,
                      backoff)
            if self._sleep(backoff):
                return EXIT_OK

    @staticmethod
    def _hand_over(spool: SpoolDirectory, lock_fd: int) -> int | None:
        """After an idle exit: let go of the spool, then look for events once more. A publisher
        writes its event before it looks for a relay or a keeper; looking after the lock is
        released, one of the two sees the other, so an event journaled while the relay was
        exiting is never left without one. The lock again (a descriptor) when events wait and
        no other keeper took the spool meanwhile, else None."""
        os.close(lock_fd)
        try:
            with Spool(spool.path) as view:
                waiting = view.pending().depth
        except (OSError, SpoolError):
            return None  # the spool is gone or unusable: a publisher's keeper says why
        if not waiting:
            return None
        try:
            fd = spool.open(fmt.KEEPER_LOCK, os.O_RDWR, create=True)
        except (OSError, SpoolError):
            return None
        if posix_lock(fd):
            return fd
        os.close(fd)
        return None  # a publisher's keeper has it: that one runs the relay

    def _run_relay(self) -> tuple[int, int]:
        """Start the relay and wait for it, passing on stop signals and the parent's death."""
        self._child = subprocess.Popen(
            [sys.executable, "-m", "openalgo_events.relay", *self.relay_args],
            stdin=subprocess.DEVNULL, close_fds=True, preexec_fn=_dies_with_keeper())
        pid = self._child.pid
        told_orphaned = False
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pidfd = -1
        try:
            while True:
                if pidfd >= 0:
                    select.select([pidfd], [], [], 1.0)
                else:
                    time.sleep(0.2)
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    return pid, status
                if (self.watch_parent and not told_orphaned
                        and os.getppid() != self._parent):
                    told_orphaned = True
                    log.warning("keeper: its parent (pid %s) is gone; the relay exits once "
                                "nothing is pending", self._parent)
                    self._signal(signal.SIGUSR1)
        finally:
            if pidfd >= 0:
                os.close(pidfd)
            self._child = None

    def _on_stop(self, signum: int, _frame: Any) -> None:
        self._stopping = True
        self._signal(signum)

    def _signal(self, signum: int) -> None:
        child = self._child  # a signal handler may call this: os.kill only, no lock
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)

    def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds``, or until a stop signal; whether it came."""
        deadline = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < deadline:
            time.sleep(min(0.2, deadline - time.monotonic()))
        return self._stopping


def _dies_with_keeper() -> Callable[[], None] | None:
    """On Linux, what the relay's child runs before exec: the kernel sends it SIGUSR1 (exit once
    idle) when the keeper dies, so a relay whose keeper was killed does not run on, unwatched,
    beside the relay of the keeper started in its place. None elsewhere."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    keeper = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGUSR1)
        if os.getppid() != keeper:  # the keeper died before that: no relay of its own
            os._exit(EXIT_OK)

    return preexec


_PR_SET_PDEATHSIG = 1
