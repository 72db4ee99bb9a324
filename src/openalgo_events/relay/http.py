"""The relay's own HTTP endpoint, on loopback: ``/health`` (its last status, as JSON: 200 when
healthy, 503 when not) and ``/metrics`` (Prometheus: its counters and the spool's gauges).

The port is ``OPENALGO_EVENTS_RELAY_PORT`` (or ``--port``); 0 takes any free one, which the
relay's status (``relay_port`` in an app's health) names. It serves figures only, never an
event, and never on another interface than loopback.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("openalgo_events.relay")


def serve(relay: Any) -> ThreadingHTTPServer | None:
    """Start serving ``relay`` (a ``relay.process.Relay``) on a daemon thread; its port is set on
    ``relay.port``. None (and a warning naming the setting) when the port cannot be had."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/health"):
                doc = {k: v for k, v in (relay.last_status or {"healthy": False}).items()
                       if k != "stats"}
                body, kind = json.dumps(doc).encode(), "application/json"
                code = 200 if doc.get("healthy") else 503
            elif self.path.startswith("/metrics"):
                try:
                    body, kind = metrics(relay)
                    code = 200
                except Exception as exc:  # prometheus_client missing: say how to get it
                    body, kind, code = str(exc).encode(), "text/plain", 501
            else:
                body, kind, code = b"not found: try /health or /metrics", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # no access log

    from .process import ENV_PORT

    try:
        server = ThreadingHTTPServer(("127.0.0.1", relay.port), Handler)
    except OSError as exc:
        log.warning("relay: no HTTP endpoint on 127.0.0.1:%s (%s); set %s to a free port",
                    relay.port, exc, ENV_PORT)
        return None
    server.daemon_threads = True
    relay.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, name="openalgo-events-relay-http",
                     daemon=True).start()
    return server


def metrics(relay: Any) -> tuple[bytes, str]:
    """The relay's Prometheus exposition and its content type."""
    from ..integrations.metrics import exposition, relay_registry

    return exposition(relay_registry(relay))
