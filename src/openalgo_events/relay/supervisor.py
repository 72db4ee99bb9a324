"""A relay started and watched by a parent that lives on: gunicorn's master.

The watcher is a real OS thread (``_threads.start_thread``). gunicorn's eventlet worker class
monkey-patches at import, so with ``--worker-class eventlet`` the master is patched too: its
``subprocess`` is eventlet's, whose ``Popen.wait`` sleeps on a hub, so the watcher only polls
(``Popen.poll`` never waits) and ``stop`` (on the master's main thread, ``on_exit``) is the one
that waits. The master never runs eventlet's hub, so the hook has the watcher's log records
passed on directly (``_hostlog.forward_directly_here``).

The relay is restarted when it dies (after a short backoff, doubling up to 10 s), and stopped
with SIGTERM after the workers at shutdown, given the close timeout to drain plus a margin, then
killed. Workers forked after ``start`` inherit
``OPENALGO_EVENTS_RELAY_AUTOSTART=FALSE``: this relay is theirs, they start none of their own.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

from .._threads import new_event, start_thread
from ..config import Settings

log = logging.getLogger("openalgo_events.relay")
ENV_PORT = "OPENALGO_EVENTS_RELAY_PORT"


class RelaySupervisor:
    """Runs ``python -m openalgo_events.relay`` as a child and keeps it running.

    >>> supervisor = RelaySupervisor(Settings.from_env()).start()  # doctest: +SKIP
    >>> supervisor.stop()  # doctest: +SKIP
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.spool_path = os.path.abspath(settings.spool_path)
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stopping = new_event()
        self._thread: Any = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "openalgo_events.relay", "--spool", self.spool_path,
                   "--wait-for-lock", "--exit-with-parent", "--port", os.environ.get(ENV_PORT, "0")]
        env = {**os.environ, **self.settings.to_env()}
        env.setdefault("PYTHONPATH", os.pathsep.join(p for p in sys.path if p))
        return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, close_fds=True)

    def start(self) -> RelaySupervisor:
        """Start the relay and its watcher; returns at once (the workers are not held back:
        what they journal before the relay is up waits in their journals)."""
        os.environ["OPENALGO_EVENTS_RELAY_AUTOSTART"] = "FALSE"
        self.process = self._spawn()
        self._thread = start_thread(self._watch, "openalgo-events-relay-supervisor")
        log.info("openalgo-events: relay started (pid %s) for spool %s", self.process.pid,
                 self.spool_path)
        return self

    def _watch(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            assert self.process is not None
            code = self.process.poll()
            if code is None:
                self._stopping.wait(0.2)
                continue
            if self._stopping.is_set():
                return
            # Under gunicorn the master's SIGCHLD handler may reap the relay first
            # (waitpid(-1)): Popen then reads status 0, and gunicorn logs the real one.
            log.error("openalgo-events: the relay (pid %s) exited (status %s); restarting it "
                      "in %s s", self.process.pid, code, backoff)
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, 10.0)
            self.process = self._spawn()
            self.restarts += 1
            started = time.monotonic()
            while self.process.poll() is None and not self._stopping.wait(0.2):
                if time.monotonic() - started > 30:
                    backoff = 0.5  # it stayed up: the next failure is a new one
                    break

    def stop(self) -> int | None:
        """SIGTERM the relay, wait for it to drain and exit; its exit status."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(self.settings.close_timeout_seconds + 5)
            except subprocess.TimeoutExpired:
                log.error("openalgo-events: the relay did not stop in time; killing it "
                          "(undelivered events stay in the spool)")
                process.kill()
                process.wait(5)
        return process.returncode
