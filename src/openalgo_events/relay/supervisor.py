"""A keeper started and watched by a parent that lives on: gunicorn's master.

The master runs ``python -m openalgo_events.relay --keep --wait-for-lock --watch-parent`` as its
child: the keeper runs the relay and restarts it when it dies, logging how it ended (reaped by
the keeper itself, the relay is never taken for one of gunicorn's workers). The master's watcher
(a real OS thread, ``_threads.start_thread``) only starts the keeper again should the keeper
itself die. gunicorn's eventlet worker class monkey-patches the master too, so the watcher only
polls (``Popen.poll`` never waits on a hub) and ``stop`` (on the master's main thread, in
``on_exit``) is the one that waits.

At shutdown the keeper gets SIGTERM after the workers are gone; it passes it on, the relay
delivers for up to the close timeout (not at all when the brokers are known down) and exits.
Workers forked after ``start`` inherit ``OPENALGO_EVENTS_RELAY_AUTOSTART=FALSE``: this relay is
theirs, they start none of their own.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from typing import Any

from .._threads import new_event, start_thread
from ..config import Settings
from .process import ENV_PORT

log = logging.getLogger("openalgo_events.relay")


class RelaySupervisor:
    """Runs the relay's keeper as a child and keeps it running.

    >>> supervisor = RelaySupervisor(Settings.from_env()).start()  # doctest: +SKIP
    >>> supervisor.stop()  # doctest: +SKIP
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.spool_path = settings.spool_location
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stopping = new_event()
        self._thread: Any = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "openalgo_events.relay", "--spool", self.spool_path,
                   "--keep", "--wait-for-lock", "--watch-parent"]
        if os.environ.get(ENV_PORT):
            command += ["--port", os.environ[ENV_PORT]]
        env = {**os.environ, **self.settings.to_env(), "KAFKA_SPOOL_PATH": self.spool_path}
        env.setdefault("PYTHONPATH", os.pathsep.join(p for p in sys.path if p))
        return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, close_fds=True)

    def start(self) -> RelaySupervisor:
        """Start the keeper and its watcher; returns at once (the workers are not held back:
        what they journal before the relay is up waits in their journals)."""
        os.environ["OPENALGO_EVENTS_RELAY_AUTOSTART"] = "FALSE"
        self.process = self._spawn()
        self._thread = start_thread(self._watch, "openalgo-events-relay-supervisor")
        log.info("openalgo-events: relay keeper started (pid %s) for spool %s",
                 self.process.pid, self.spool_path)
        return self

    def _watch(self) -> None:
        backoff = 0.5
        while not self._stopping.wait(0.5):
            assert self.process is not None
            if self.process.poll() is None:
                continue
            if self._stopping.is_set():
                return
            # gunicorn's SIGCHLD handler reaps any child first (and logs it as a worker): the
            # keeper's own status is lost here, so only its death is said.
            log.error("openalgo-events: the relay's keeper (pid %s) is gone; starting another "
                      "in %s s", self.process.pid, backoff)
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, 10.0)
            self.process = self._spawn()
            self.restarts += 1

    def stop(self) -> int | None:
        """SIGTERM the keeper (it passes it on), wait for the relay to stop; the exit status."""
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
                          "(undelivered events stay in the journals)")
                process.kill()
                process.wait(5)
        return process.returncode
