"""Keeping a relay running while this process's events wait, from inside a host we do not own.

``Watch`` is one real OS thread per publishing process, alive only while some of the process's
events are not acknowledged. About once a second it reads the ledger, repairs the journal if it
was damaged (``JournalWriter.check``), and, when neither a relay nor a keeper holds the spool,
starts a keeper detached (``spawn_keeper``): a relay killed by the OOM killer is replaced
whether or not the app publishes again. It touches nothing of the host's: no logging handler
(records go through ``_hostlog``), no lock of the host's, no patched module (the process is
started with ``posix_spawn``, reaped with the unpatched ``waitpid``), so it is safe inside an
eventlet or gevent worker. A forked child has no thread: its first publish starts its own.

The keeper (``relay.keeper``) is a small process that runs the relay as its child and restarts
it when it dies; it and the relay outlive a short script and exit once nothing is pending.
Under gunicorn the hook's master runs the keeper instead (``OPENALGO_EVENTS_RELAY_AUTOSTART``
is FALSE in its workers); under systemd, ``openalgo-events relay`` runs without one.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from .._threads import new_event, new_lock, real_module, start_thread
from ..config import Settings
from ..errors import SpoolError
from ..spool import format as fmt
from ..spool.directory import SpoolDirectory, lock_holder

log = logging.getLogger("openalgo_events.kafka")

CHECK_EVERY = 1.0  # seconds between the watch's looks while events wait
START_GRACE = 10.0  # seconds a keeper we started has to show a relay before we start another
MAX_BACKOFF = 60.0  # seconds between starts while none succeeds (a spool the relay cannot use)
LOG_ROTATE_BYTES = 5 * 1024 * 1024
# FALSE where something else runs the relay (gunicorn's master, systemd, a sidecar).
ENV_AUTOSTART = "OPENALGO_EVENTS_RELAY_AUTOSTART"


def autostart() -> bool:
    """Read at every look, not once: gunicorn's master sets it after a --preload import."""
    return os.environ.get(ENV_AUTOSTART, "TRUE").upper() not in ("FALSE", "0", "NO")


def relay_running(spool: SpoolDirectory) -> bool:
    """Whether a relay, or a keeper that will start one, holds the spool."""
    return (lock_holder(spool, fmt.RELAY_LOCK) is not None
            or lock_holder(spool, fmt.KEEPER_LOCK) is not None)


class Starter:
    """Starts keepers for one spool, no more often than the backoff allows."""

    def __init__(self, settings: Settings, spool: SpoolDirectory) -> None:
        self.settings = settings
        self.spool = spool
        self._next_start = 0.0
        self._backoff = START_GRACE
        self._lock = new_lock()

    def ensure(self) -> bool:
        """Start a keeper if none and no relay holds the spool (and starting is ours to do);
        whether one runs or was just started."""
        if relay_running(self.spool):
            self.worked()  # one runs: if it dies, start another at once
            return True
        if not autostart():
            return False
        with self._lock:
            now = time.monotonic()
            if now < self._next_start:
                return True  # the one we started may still be starting
            self._next_start = now + self._backoff
            self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        return spawn_keeper(self.settings, self.spool)

    def worked(self) -> None:
        """A relay ran (it holds the spool, or it acknowledged every event of ours): the next
        start need not wait for the last one's grace."""
        with self._lock:
            self._backoff = START_GRACE
            self._next_start = 0.0


def spawn_keeper(settings: Settings, spool: SpoolDirectory) -> bool:
    """Start ``python -m openalgo_events.relay --keep --exit-when-idle`` for ``spool`` in its own
    session, reparented at once (``sh`` starts it in the background and exits), its output
    appended to ``relay.log``. Two processes racing here start two keepers; the second finds
    the keeper lock taken and exits. Returns whether it was started."""
    real_os: Any = real_module("os")
    command = [sys.executable, "-m", "openalgo_events.relay", "--spool", spool.path, "--keep",
               "--exit-when-idle"]
    env = {**os.environ, **settings.to_env(), "KAFKA_SPOOL_PATH": spool.path}
    env.setdefault("PYTHONPATH", os.pathsep.join(p for p in sys.path if p))
    try:
        out = _relay_log(spool)
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            pid = os.posix_spawn("/bin/sh", ["sh", "-c", '"$@" &', "sh", *command], env,
                                 file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0),
                                               (os.POSIX_SPAWN_DUP2, out, 1),
                                               (os.POSIX_SPAWN_DUP2, out, 2)],
                                 setsid=True)
        finally:
            os.close(devnull)
            os.close(out)
        real_os.waitpid(pid, 0)  # sh exits at once; a host's SIGCHLD handler may reap it first
    except ChildProcessError:
        pass
    except (OSError, SpoolError) as exc:
        log.error("could not start a Kafka relay for spool %s (%s); events stay in the spool "
                  "until one runs: start 'openalgo-events relay'", spool.path, exc)
        return False
    log.info("started a Kafka relay for spool %s (its log: %s)", spool.path,
             os.path.join(spool.path, fmt.RELAY_LOG))
    return True


def _relay_log(spool: SpoolDirectory) -> int:
    """``relay.log`` opened for appending (0600, no link followed), rotated past 5 MiB."""
    fd = spool.open(fmt.RELAY_LOG, os.O_WRONLY | os.O_APPEND, create=True)
    if os.fstat(fd).st_size > LOG_ROTATE_BYTES:
        os.close(fd)
        spool.rename(fmt.RELAY_LOG, f"{fmt.RELAY_LOG}.1")
        fd = spool.open(fmt.RELAY_LOG, os.O_WRONLY | os.O_APPEND, create=True)
    return fd


class Watch:
    """The thread that keeps a relay running while this process's events wait.

    ``poke`` (on every publish) starts it when it is not running; it ends itself once ``look``
    (given by the transport: repair the journal, read the ledger) says nothing of ours waits
    and no publish came meanwhile.
    """

    def __init__(self, look: Callable[[], bool], starter: Starter) -> None:
        self._look = look
        self._starter = starter
        self._lock = new_lock()
        self._running = False
        self._poked = False  # a publish since the last look
        self._stop = new_event()

    def poke(self) -> None:
        with self._lock:
            self._poked = True
            if self._running or self._stop.is_set():
                return
            self._running = True
        start_thread(self._run, "openalgo-events-relay-watch")

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._poked = False
            try:
                waiting = self._look()
            except Exception:
                log.exception("checking on the Kafka relay failed; trying again in %s s",
                              CHECK_EVERY)
                waiting = True
            if not waiting:
                # every event acknowledged: a relay worked, even if it was gone before a look
                # saw it (a relay killed now is replaced at the next publish, not after the grace)
                self._starter.worked()
                with self._lock:
                    if not self._poked:
                        self._running = False
                        return
                continue
            self._starter.ensure()
            self._stop.wait(CHECK_EVERY)
        with self._lock:
            self._running = False

    def stop(self) -> None:
        self._stop.set()
