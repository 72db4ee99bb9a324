"""The Flask extension: one publisher per process, health, metrics and a run-time mode switch.

Opt-in and in Flask's extension style: state lives in ``app.extensions["openalgo_events"]``,
never on the extension object, so one ``OpenAlgoEvents`` serves any number of apps.

>>> events = OpenAlgoEvents()
>>> events.init_app(app, socketio)  # doctest: +SKIP

Routes, under ``url_prefix`` (default ``/openalgo-events``):

- ``GET  /health``: JSON status; 200 when events are getting through, 503 when not.
- ``GET  /metrics``: Prometheus text format (needs ``openalgo-events[metrics]``; without it
  501 with the install command).
- ``POST /mode``: ``{"mode": "KAFKA", "rollout_percent": 10}`` with
  ``Authorization: Bearer $ORDER_EVENT_ADMIN_TOKEN``; off (404) while no token is set.
- ``GET  /recovery.js``: the browser helper for Socket.IO recovery
  (``OpenAlgoEventsRecovery.attach(socket)``; see ``openalgo_events.recovery``).
"""

from __future__ import annotations

import atexit
import hmac
import logging
import os
import signal
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request, send_file

from .._threads import new_lock, real_threading, start_thread
from ..config import Settings
from ..errors import ConfigError, MissingDependencyError, OpenAlgoEventsError
from ..publisher import EventPublisher, EventPublisherFactory
from ..transports.routing import Route

log = logging.getLogger("openalgo_events.flask")

EXTENSION = "openalgo_events"
MODE_USAGE = ('send JSON {"mode": "SOCKETIO" | "KAFKA" | "BOTH", "rollout_percent": 0-100} '
              "(rollout_percent is optional and keeps its value when left out)")


@dataclass(eq=False)
class EventsState:
    """What the extension keeps per app: the publisher, the consumer, the metrics registry."""

    settings: Settings
    publisher: EventPublisher
    owns_publisher: bool
    env_file: str | None = None
    consumer: Any = None
    bridge: Any = None  # the zero-edit install's KafkaSocketIOBridge, reported in health
    registry: Any = None
    previous_sighup: Any = None
    _lock: Any = field(default_factory=new_lock)
    _closed: bool = False

    # -- health ---------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """The publisher's (and consumer's) health, with the Kafka figures at the top level."""
        status = self.publisher.health()
        parts = status.get("transports", {})
        kafka = parts.get("kafka") or (status if status.get("transport") == "kafka" else {})
        route = self.route
        body: dict[str, Any] = {
            "healthy": bool(status.get("healthy")),
            "mode": route.mode.value if route else None,
            "rollout_percent": route.rollout_percent if route else None,
            "broker_reachable": kafka.get("broker_reachable"),
            "spool_depth": kafka.get("spool_depth", 0),
            "oldest_pending_age_seconds": kafka.get("oldest_pending_age_seconds"),
            "last_error": kafka.get("last_error"),
            "transports": parts or {status.get("transport", "transport"): status},
        }
        if self.consumer is not None:
            consumer = self.consumer.health()
            body["consumer"] = consumer
            body["healthy"] = body["healthy"] and bool(consumer.get("healthy"))
            body["last_error"] = body["last_error"] or consumer.get("last_error")
        if self.bridge is not None:
            bridge = self.bridge.health()
            body["bridge"] = bridge
            body["healthy"] = body["healthy"] and bool(bridge.get("healthy"))
        return body

    # -- mode switch ----------------------------------------------------------------------
    @property
    def route(self) -> Route | None:
        route = getattr(self.publisher.transport, "route", None)
        return route if isinstance(route, Route) else None

    def switch(self, mode: str, rollout_percent: int | None = None) -> Route:
        """Switch the route atomically; ``ConfigError`` says why a switch is refused."""
        return self.publisher.switch_mode(mode, rollout_percent)

    def reload(self) -> Route | None:
        """Re-read the env file (its values win over the environment); apply mode and rollout.

        Other variables need a restart. A bad file is logged and changes nothing.
        """
        from dotenv import dotenv_values

        values = dotenv_values(self.env_file) if self.env_file else {}
        environ = {**os.environ, **{k: v for k, v in values.items() if v is not None}}
        try:
            fresh = Settings.from_env(environ)
            route = self.switch(fresh.mode.value, fresh.rollout_percent)
        except ConfigError as exc:
            log.error("reload of %s refused, the route is unchanged: %s", self.env_file, exc)
            return None
        log.warning("reloaded %s: mode %s, rollout %s%%", self.env_file, route.mode.value,
                    route.rollout_percent)
        return route

    def install_sighup(self) -> bool:
        """Reload on SIGHUP. Only the main thread may install signal handlers."""
        threading = real_threading()
        if not hasattr(signal, "SIGHUP") or threading.current_thread() is not (
                threading.main_thread()):
            log.warning("SIGHUP reload not installed: signal handlers need the main thread")
            return False

        def reload() -> None:
            self.reload()

        def on_sighup(_signum: int, _frame: Any) -> None:
            # The handler may interrupt code holding the switch lock: do the work elsewhere.
            start_thread(reload, "openalgo-events-reload")

        self.previous_sighup = signal.signal(signal.SIGHUP, on_sighup)
        return True

    # -- shutdown -------------------------------------------------------------------------
    def close(self, timeout: float | None = None) -> int:
        """Stop the consumer, flush and close the publisher (if ours); return events left."""
        with self._lock:
            if self._closed:
                return 0
            self._closed = True
        atexit.unregister(self.close)
        timeout = self.settings.close_timeout_seconds if timeout is None else timeout
        if self.previous_sighup is not None and (
                real_threading().current_thread() is real_threading().main_thread()):
            signal.signal(signal.SIGHUP, self.previous_sighup)
        if self.consumer is not None:
            self.consumer.stop(timeout)
        if not self.owns_publisher:
            return 0
        left = self.publisher.close(timeout)
        with EventPublisherFactory._lock:
            if EventPublisherFactory._instance is self.publisher:
                EventPublisherFactory._instance = None
        return left


class OpenAlgoEvents:
    """Flask extension: ``OpenAlgoEvents(app, socketio)`` or ``init_app`` later.

    >>> events = OpenAlgoEvents(app, socketio)  # doctest: +SKIP
    >>> events.publisher.publish("force_logout", "alice", message="bye")  # doctest: +SKIP
    """

    def __init__(self, app: Flask | None = None, socketio: Any = None,
                 settings: Settings | None = None, **options: Any) -> None:
        if app is not None:
            self.init_app(app, socketio, settings, **options)

    def init_app(
        self,
        app: Flask,
        socketio: Any = None,
        settings: Settings | None = None,
        *,
        url_prefix: str = "/openalgo-events",
        publisher: EventPublisher | None = None,
        reload_on_sighup: bool = False,
        env_file: str | None = ".env",
    ) -> EventsState:
        """Attach to ``app``: the process's publisher, the routes, the consumer if enabled.

        ``settings`` default to the environment (and ``env_file``). ``publisher`` replaces the
        process's one (which the caller then closes). ``reload_on_sighup`` re-reads
        ``env_file`` on SIGHUP and applies ``ORDER_EVENT_MODE`` and ``KAFKA_ROLLOUT_PERCENT``.
        """
        if EXTENSION in app.extensions:
            raise OpenAlgoEventsError(f"openalgo-events is already set up on app {app.name!r}")
        settings = settings or Settings.from_env(env_file=env_file)
        state = EventsState(
            settings=settings,
            publisher=publisher or EventPublisherFactory.create_publisher(socketio, settings),
            owns_publisher=publisher is None,
            env_file=env_file,
        )
        app.extensions[EXTENSION] = state
        atexit.register(state.close)
        state.registry = _registry(state)
        if settings.consumer_enabled:
            from ..inbound import EsbConsumer

            state.consumer = EsbConsumer(settings, publisher=state.publisher, socketio=socketio)
            state.consumer.start()
        if reload_on_sighup:
            state.install_sighup()
        blueprint = _blueprint()
        csrf = app.extensions.get("csrf")  # Flask-WTF: the mode endpoint uses a bearer token
        if csrf is not None and hasattr(csrf, "exempt"):
            csrf.exempt(blueprint)
        app.register_blueprint(blueprint, url_prefix=url_prefix)
        return state

    @staticmethod
    def state(app: Flask | None = None) -> EventsState:
        """This extension's state on ``app`` (default: the current app)."""
        target = app if app is not None else current_app
        try:
            state: EventsState = target.extensions[EXTENSION]
        except KeyError:
            raise OpenAlgoEventsError("openalgo-events is not set up on this app; call "
                                      "OpenAlgoEvents(app, socketio) first") from None
        return state

    @property
    def publisher(self) -> EventPublisher:
        """The current app's publisher."""
        return self.state().publisher

    def close(self, app: Flask | None = None, timeout: float | None = None) -> int:
        """Shut down early (it also runs at exit); return how many events were left."""
        return self.state(app).close(timeout)


def mount_operations(app: Flask, settings: Settings, publisher: EventPublisher, *,
                     socketio: Any = None, bridge: Any = None,
                     url_prefix: str = "/openalgo-events") -> EventsState | None:
    """Give an app that does not use the extension its routes (health, metrics, mode) for
    an installed ``publisher``: what the gunicorn hook does in the zero-edit install.

    Starts the inbound consumer when ``KAFKA_CONSUMER_ENABLED=TRUE``. Returns None, and changes
    nothing, when the app already uses the extension (its own routes are there). Call it
    before the app's first request (Flask refuses new routes after it).
    """
    if EXTENSION in app.extensions:
        log.info("openalgo-events: the app already uses the extension; its routes stay")
        return None
    state = EventsState(settings=settings, publisher=publisher, owns_publisher=False,
                        env_file=None, bridge=bridge)
    app.extensions[EXTENSION] = state
    state.registry = _registry(state)
    if settings.consumer_enabled and socketio is not None:
        from ..inbound import EsbConsumer

        state.consumer = EsbConsumer(settings, publisher=publisher, socketio=socketio).start()
    blueprint = _blueprint()
    csrf = app.extensions.get("csrf")
    if csrf is not None and hasattr(csrf, "exempt"):
        csrf.exempt(blueprint)
    app.register_blueprint(blueprint, url_prefix=url_prefix)
    return state


def _registry(state: EventsState) -> Any:
    try:
        from .metrics import metrics_registry

        return metrics_registry(lambda: state.publisher, lambda: state.consumer)
    except MissingDependencyError:
        return None


def _blueprint() -> Blueprint:
    blueprint = Blueprint("openalgo_events", __name__)
    blueprint.add_url_rule("/health", "health", _health, methods=["GET"])
    blueprint.add_url_rule("/metrics", "metrics", _metrics, methods=["GET"])
    blueprint.add_url_rule("/mode", "mode", _mode, methods=["POST"])
    blueprint.add_url_rule("/recovery.js", "recovery_js", _recovery_js, methods=["GET"])
    return blueprint


def _recovery_js() -> Response:
    from ..recovery import CLIENT_SCRIPT

    return send_file(CLIENT_SCRIPT, mimetype="application/javascript", max_age=300)


def _health() -> tuple[Response, int]:
    body = OpenAlgoEvents.state().health()
    return jsonify(body), 200 if body["healthy"] else 503


def _metrics() -> Response | tuple[str, int]:
    state = OpenAlgoEvents.state()
    if state.registry is None:
        return ("Prometheus metrics need prometheus-client: "
                "pip install 'openalgo-events[metrics]'\n", 501)
    from .metrics import exposition

    payload, content_type = exposition(state.registry)
    return Response(payload, content_type=content_type)


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message}), status


def _mode() -> tuple[Response, int]:
    state = OpenAlgoEvents.state()
    token = state.settings.admin_token
    if not token:
        return _error(404, "the mode endpoint is off; set ORDER_EVENT_ADMIN_TOKEN to enable it")
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        # Say which of the three it was: a caller who sent a token needs to hear that it is
        # the wrong one, not to be told to send one (the token itself is never repeated).
        if not given:
            problem = "no admin token was sent; send it as 'Authorization: Bearer <token>'"
        elif not given.startswith("Bearer "):
            problem = ("the Authorization header is not a bearer token; send the admin token "
                       "as 'Authorization: Bearer <token>'")
        else:
            problem = "the admin token sent is not this app's ORDER_EVENT_ADMIN_TOKEN"
        response, status = _error(401, problem)
        response.headers["WWW-Authenticate"] = "Bearer"
        return response, status
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("mode"), str):
        return _error(400, MODE_USAGE)
    percent = body.get("rollout_percent")
    if percent is not None and (isinstance(percent, bool) or not isinstance(percent, int)):
        return _error(400, f"rollout_percent {percent!r} is not a whole number; {MODE_USAGE}")
    previous = state.route
    try:
        route = state.switch(body["mode"], percent)
    except ConfigError as exc:
        return _error(400, "; ".join(exc.problems))
    log.warning("mode switched through the admin endpoint by %s", request.remote_addr)
    return jsonify({
        "mode": route.mode.value,
        "rollout_percent": route.rollout_percent,
        "previous": {"mode": previous.mode.value, "rollout_percent": previous.rollout_percent}
        if previous else None,
    }), 200


__all__ = ["EventsState", "OpenAlgoEvents", "mount_operations"]
