"""A gunicorn config module that installs the OpenAlgo integration in each worker.

    gunicorn -c python:openalgo_events.integrations.gunicorn --worker-class eventlet -w 1 app:app

``post_worker_init`` runs in the worker once the app is imported (and, for the eventlet worker,
monkey-patched), and calls ``install()``; then it mounts the operations routes on the app
(``/openalgo-events/health``, ``/metrics``, ``POST /mode``; skipped when the app already uses
the Flask extension) and, with ``KAFKA_CONSUMER_ENABLED=TRUE``, starts the inbound consumer.
``worker_exit`` releases the worker's journal (it never waits on Kafka). In the master,
``when_ready`` starts the Kafka relay process and supervises it (restarted if it dies;
``relay.supervisor``) and ``on_exit`` stops it, after the workers. To keep an existing config
file, name it in ``OPENALGO_EVENTS_GUNICORN_CONFIG``: its settings are loaded here and its own
hooks of these names run before ours. Or import these hooks into it.

Only hook names are public here: gunicorn reads every public name of a config module as a
setting.
"""

from __future__ import annotations

import logging as _logging
import os as _os
import runpy as _runpy
import sys as _sys
from typing import Any as _Any

_CHAINED: dict[str, _Any] = {}


def _load_existing_config() -> None:
    path = _os.environ.get("OPENALGO_EVENTS_GUNICORN_CONFIG")
    if not path:
        return
    for name, value in _runpy.run_path(path).items():
        if name.startswith("_"):
            continue
        if name in ("post_worker_init", "worker_exit", "when_ready", "on_exit"):
            _CHAINED[name] = value
        else:
            globals()[name] = value


def post_worker_init(worker: _Any) -> None:
    """Attach to the app's bus and Socket.IO instance (see ``integrations.installation``)."""
    if "post_worker_init" in _CHAINED:
        _CHAINED["post_worker_init"](worker)
    from openalgo_events.integrations.installation import install, mount

    installation = install()
    if installation is not None:
        mount(installation, getattr(worker, "wsgi", None))


def worker_exit(server: _Any, worker: _Any) -> None:
    """Release the worker's journal at once; the relay delivers what it holds."""
    if "worker_exit" in _CHAINED:
        _CHAINED["worker_exit"](server, worker)
    from openalgo_events.integrations import installation as _install

    if _install.current is not None:
        _install.current.close()
        _install.current = None
    from openalgo_events._hostlog import drain

    drain()  # log records our threads handed to the hub and it has not forwarded yet


_SUPERVISOR: list[_Any] = []
_AUTOSTART = "OPENALGO_EVENTS_RELAY_AUTOSTART"
_AUTOSTART_BEFORE = _os.environ.get(_AUTOSTART)
if _os.path.basename(_sys.argv[0] if _sys.argv else "").startswith("gunicorn"):
    # Loaded by gunicorn's master, before a --preload import of the app: a publisher used at
    # import must not start a relay of its own, the master starts one in when_ready.
    _os.environ[_AUTOSTART] = "FALSE"


def when_ready(server: _Any) -> None:
    """In the master, before the workers: start the relay process and supervise it."""
    if "when_ready" in _CHAINED:
        _CHAINED["when_ready"](server)
    from openalgo_events.config import Settings
    from openalgo_events.errors import ConfigError
    from openalgo_events.relay.supervisor import RelaySupervisor

    log = _logging.getLogger("openalgo_events.install")
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        log.error("openalgo-events: no relay started: %s", exc)
        return
    if not settings.mode.uses_kafka or settings.spool_path == ":memory:":
        # No Kafka from the hook (or the in-process relay of an in-memory spool): a publisher
        # the app builds itself starts its own relay, as outside gunicorn.
        if _AUTOSTART_BEFORE is None:
            _os.environ.pop(_AUTOSTART, None)
        else:
            _os.environ[_AUTOSTART] = _AUTOSTART_BEFORE
        return
    from openalgo_events._hostlog import forward_directly_here

    # Patched by the eventlet worker class, the master still never runs eventlet's hub: the
    # supervisor thread's records go straight to the master's handlers (see _hostlog).
    forward_directly_here()
    _log_to_gunicorn(server.log.error_log)
    _SUPERVISOR.append(RelaySupervisor(settings).start())


class _ToGunicornLog(_logging.Handler):
    """Passes our records to gunicorn's error log, at the levels its ``--log-level`` shows."""

    def __init__(self, error_log: _logging.Logger) -> None:
        super().__init__()
        self.error_log = error_log
        self.addFilter(lambda record: record.name.split(".")[0] == "openalgo_events")

    def emit(self, record: _logging.LogRecord) -> None:
        # Its handlers, not ``handle``: a --log-config that lets gunicorn.error propagate to the
        # root would bring the record back here.
        if self.error_log.isEnabledFor(record.levelno):
            for handler in self.error_log.handlers:
                if record.levelno >= handler.level:
                    handler.handle(record)


def _log_to_gunicorn(error_log: _logging.Logger) -> None:
    """In a master whose root logger has no handler (gunicorn configures only its own loggers;
    an app configures the root in its workers, unless --preload imports it here), our records
    (the relay started, restarted, stopped) would be lost below WARNING and bare above it: pass
    them to gunicorn's error log instead. Forked children (the workers) drop the handler: there
    the app's own logging takes our records."""
    root, ours = _logging.getLogger(), _logging.getLogger("openalgo_events")
    if root.handlers:
        return
    handler, level = _ToGunicornLog(error_log), ours.level
    root.addHandler(handler)
    ours.setLevel(error_log.getEffectiveLevel())  # the root's WARNING would drop INFO first

    def in_child() -> None:
        root.removeHandler(handler)
        ours.setLevel(level)

    _os.register_at_fork(after_in_child=in_child)


def on_exit(server: _Any) -> None:
    """In the master, after the workers have stopped: stop the relay (it drains first)."""
    if "on_exit" in _CHAINED:
        _CHAINED["on_exit"](server)
    while _SUPERVISOR:
        _SUPERVISOR.pop().stop()
    from openalgo_events._hostlog import drain

    drain()  # records queued before forward_directly_here(), e.g. by a --preload import


_load_existing_config()
