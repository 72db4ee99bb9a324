"""A gunicorn config module that installs the OpenAlgo integration in each worker.

    gunicorn -c python:openalgo_events.integrations.gunicorn --worker-class eventlet -w 1 app:app

``post_worker_init`` runs in the worker once the app is imported (and, for the eventlet worker,
monkey-patched), and calls ``install()``; then it mounts the operations routes on the app
(``/openalgo-events/health``, ``/metrics``, ``POST /mode``; skipped when the app already uses
the Flask extension) and, with ``KAFKA_CONSUMER_ENABLED=TRUE``, starts the inbound consumer.
``worker_exit`` flushes. To keep an existing config
file, name it in ``OPENALGO_EVENTS_GUNICORN_CONFIG``: its settings are loaded here and its own
``post_worker_init``/``worker_exit`` run before ours. Or import these two hooks into it.

Only hook names are public here: gunicorn reads every public name of a config module as a
setting.
"""

from __future__ import annotations

import os as _os
import runpy as _runpy
from typing import Any as _Any

_CHAINED: dict[str, _Any] = {}


def _load_existing_config() -> None:
    path = _os.environ.get("OPENALGO_EVENTS_GUNICORN_CONFIG")
    if not path:
        return
    for name, value in _runpy.run_path(path).items():
        if name.startswith("_"):
            continue
        if name in ("post_worker_init", "worker_exit"):
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
    """Flush what the worker published; undelivered events stay in the spool."""
    if "worker_exit" in _CHAINED:
        _CHAINED["worker_exit"](server, worker)
    from openalgo_events.integrations import installation as _install

    if _install.current is not None:
        _install.current.close()
        _install.current = None
    from openalgo_events._hostlog import drain

    drain()  # log records our threads handed to the hub and it has not forwarded yet


_load_existing_config()
