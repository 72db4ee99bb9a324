"""Werkzeug's threaded development server around the demo app, in the foreground or on a
background thread (tests). Flask-SocketIO's threading mode needs nothing more: long-polling
is plain HTTP and websocket upgrades go through simple-websocket."""

from __future__ import annotations

from typing import Any

from .._threads import start_thread


class DemoServer:
    """Serves ``app`` on ``host:port``; port 0 picks a free port (see ``.url``).

    >>> server = DemoServer(app).start()  # doctest: +SKIP
    >>> server.url  # doctest: +SKIP
    'http://127.0.0.1:40517'
    >>> server.stop()  # doctest: +SKIP
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        from werkzeug.serving import make_server

        self._server = make_server(host, port, app, threaded=True)
        self.host = host
        self.port = int(self._server.server_port)
        self._thread: Any = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def serve_forever(self) -> None:
        """Serve until ``stop()`` or Ctrl-C."""
        self._server.serve_forever()

    def start(self) -> DemoServer:
        """Serve on a background thread and return at once (the socket is already bound)."""
        self._thread = start_thread(self._server.serve_forever, f"demo-server-{self.port}")
        return self

    def stop(self) -> None:
        """Stop a background server (a foreground one stops with Ctrl-C) and free the port."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> DemoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
