"""The reference app: OpenAlgo's part in miniature, to see every event on a page.

A Flask-SocketIO app (``async_mode="threading"``, like OpenAlgo) with an order ticket, a live
feed of the Socket.IO events it receives, and REST endpoints shaped like OpenAlgo's over a
simulated position book. Events go out through ``build_publisher``, so ``ORDER_EVENT_MODE``
decides where: the page (SOCKETIO), Kafka (KAFKA) or both (BOTH). Started in KAFKA mode, a
``KafkaSocketIOBridge`` brings the page its events back from the topic, as in a deployment of
several app processes. The Flask extension is mounted as an application would mount it:
``/openalgo-events/health``, ``/metrics`` and ``/mode``. With Kafka configured, a tap shows
the page each record that reached the topic, as ``kafka_record`` events. With
``ORDER_EVENT_SOCKETIO_RECOVERY=TRUE`` the page recovers what it missed across a reconnect
(``openalgo-events-recovery.js``, served next to the page's socket.io client).

>>> app, socketio = create_app()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, jsonify, render_template, request, send_file
from flask.typing import ResponseReturnValue
from flask_socketio import SocketIO, join_room

from ..config import Mode, Settings
from ..envelope import Envelope
from ..errors import ConfigError
from ..integrations.flask import EventsState, OpenAlgoEvents
from ..publisher import EventPublisher, build_publisher
from ..recovery import CLIENT_SCRIPT
from ..transports.socketio import browser_payload, user_room
from .kafka_tap import KafkaTap
from .orders import BROKER, MODES, BadRequest, OrderDesk, parse_order

log = logging.getLogger("openalgo_events.demo")

EXTENSION = "openalgo_events_demo"
DEMO_API_KEY = "demo-api-key"
DEMO_USER = "demo-user"
SOCKETIO_JS_VAR = "OPENALGO_EVENTS_SOCKETIO_JS"
SOCKETIO_JS = Path("node_modules", "socket.io-client", "dist", "socket.io.min.js")
MIN_PASSWORD = 8
META_EVENT = "demo_event_meta"  # the page's own channel: each event's id and timestamp
STATIC = Path(__file__).resolve().parent / "static"


class Forbidden(Exception):
    """The API key is missing or unknown (OpenAlgo answers 403)."""


@dataclass
class DemoState:
    """What the app keeps in ``app.extensions["openalgo_events_demo"]``."""

    settings: Settings
    publisher: EventPublisher
    desk: OrderDesk
    api_keys: Mapping[str, str]
    events: EventsState | None = None
    tap: KafkaTap | None = None
    bridge: Any = None  # KafkaSocketIOBridge, started in KAFKA mode

    def user_of(self, body: Mapping[str, Any]) -> str:
        """The user an ``apikey`` belongs to; the key itself goes no further."""
        key = body.get("apikey")
        user = self.api_keys.get(key) if isinstance(key, str) else None
        if user is None:
            raise Forbidden("Invalid openalgo apikey")
        return user

    def close(self, timeout: float = 5.0) -> int:
        """Stop the tap, then flush and close the publisher; returns undelivered events."""
        if self.tap is not None:
            self.tap.stop(timeout)
        if self.bridge is not None:
            self.bridge.stop()
        if self.events is not None:
            self.events.close(timeout)  # the extension's consumer; the publisher is ours
        return self.publisher.close(timeout)


def socketio_client_path(environ: Mapping[str, str] | None = None) -> Path | None:
    """socket.io.min.js from npm: ``$OPENALGO_EVENTS_SOCKETIO_JS``, else the copy a wheel
    ships in ``static/vendor`` (made at build time), else the nearest ``node_modules`` above
    the current directory or above this package."""
    environ = os.environ if environ is None else environ
    if environ.get(SOCKETIO_JS_VAR):
        path = Path(environ[SOCKETIO_JS_VAR])
        return path if path.is_file() else None
    if (STATIC / "vendor" / SOCKETIO_JS.name).is_file():
        return STATIC / "vendor" / SOCKETIO_JS.name
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for folder in (start, *start.parents):
            if (folder / SOCKETIO_JS).is_file():
                return folder / SOCKETIO_JS
    return None


def missing_client_message(environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    if environ.get(SOCKETIO_JS_VAR):
        return (f"{SOCKETIO_JS_VAR}={environ[SOCKETIO_JS_VAR]} is not a file; point it at "
                "socket.io-client's dist/socket.io.min.js, or unset it")
    return ("socket.io-client is missing: an installed wheel ships it as "
            "openalgo_events/demo/static/vendor/socket.io.min.js; in a checkout run `npm ci` "
            f"(it installs {SOCKETIO_JS}), or set {SOCKETIO_JS_VAR} to the path of "
            "socket.io.min.js")


def create_app(settings: Settings | None = None, *, api_keys: Mapping[str, str] | None = None,
               kafka_tap: bool = True) -> tuple[Flask, Any]:
    """The demo's Flask app and its Flask-SocketIO server.

    ``settings`` defaults to ``Settings.from_env()``. ``api_keys`` maps API keys to user ids
    (default: ``demo-api-key`` -> ``demo-user``). With Kafka in the mode and ``kafka_tap``,
    a background thread mirrors the topic to the page. In KAFKA mode a bridge emits the
    topic's events to the page while the route stays KAFKA. Call ``demo_state(app).close()``
    at shutdown.
    """
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    socketio = SocketIO(app, async_mode="threading")
    publisher = _Stamped(build_publisher(settings, socketio), socketio, settings.socketio_scope)
    state = DemoState(settings, publisher, OrderDesk(publisher),
                      dict(api_keys or {DEMO_API_KEY: DEMO_USER}))
    # Health, metrics and the mode switch, exactly as an application mounts them.
    state.events = OpenAlgoEvents().init_app(app, socketio, settings, publisher=publisher,
                                             env_file=None)
    if kafka_tap and settings.bootstrap_servers:
        state.tap = KafkaTap(settings, socketio).start()
    if settings.mode is Mode.KAFKA:
        from ..integrations.bridge import KafkaSocketIOBridge

        events = state.events

        def kafka_route() -> bool:  # after a switch to BOTH or SOCKETIO the publisher emits
            route = events.route
            return route is None or route.mode is Mode.KAFKA

        state.bridge = events.bridge = KafkaSocketIOBridge(settings, socketio,
                                                           active=kafka_route).start()
    app.extensions[EXTENSION] = state
    _routes(app)
    socketio.on_event("connect", _join_user_room)
    return app, socketio


class _Stamped(EventPublisher):
    """The demo's publisher: the real one, and after each event a ``demo_event_meta`` message
    with its event_id and timestamp, so that the page shows when the event happened (today's
    Socket.IO payloads carry neither, and stay unchanged).

    The message carries the event's browser payload, never more: the page matches it to the
    event's row by that payload, and a browser must not learn through the demo's channel what
    the catalog keeps for Kafka (``password_change``'s IP address and user agent), nor, in
    the user scope, another user's events."""

    def __init__(self, inner: EventPublisher, socketio: Any, scope: str) -> None:
        self.__dict__.update(inner.__dict__)  # the same transport, stats and settings
        self._socketio = socketio
        self._scope = scope

    def publish(self, event_type: str, user_id: str | None,
                data: Mapping[str, Any] | None = None, **fields: Any) -> Envelope:
        envelope = super().publish(event_type, user_id, data, **fields)
        # What the event's own payload carries, no more (never a Kafka-only field).
        room = user_room(envelope.user_id) if self._scope == "user" else None
        self._socketio.emit(META_EVENT, {"event_type": envelope.event_type,
                                         "event_id": envelope.event_id,
                                         "timestamp": envelope.timestamp,
                                         "data": browser_payload(envelope)}, to=room)
        return envelope


def demo_state(app: Flask) -> DemoState:
    state: DemoState = app.extensions[EXTENSION]
    return state


def _routes(app: Flask) -> None:
    def body() -> dict[str, Any]:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise BadRequest("the body must be a JSON object "
                             "(Content-Type: application/json)")
        return data

    @app.errorhandler(BadRequest)
    def bad_request(exc: BadRequest) -> ResponseReturnValue:
        return jsonify(status="error", message=str(exc)), 400

    @app.errorhandler(Forbidden)
    def forbidden(exc: Forbidden) -> ResponseReturnValue:
        return jsonify(status="error", message=str(exc)), 403

    @app.get("/")
    def index() -> ResponseReturnValue:
        state = demo_state(app)
        route = state.events.route if state.events is not None else None
        return render_template(
            "index.html", mode=route.mode.value if route else state.settings.mode.value,
            api_key=DEMO_API_KEY,
            topic=state.settings.order_events_topic if state.settings.bootstrap_servers else "",
        )

    @app.get("/favicon.ico")
    def favicon() -> ResponseReturnValue:
        return send_file(STATIC / "favicon.svg", mimetype="image/svg+xml", max_age=86400)

    @app.get("/vendor/socket.io.min.js")
    def socketio_js() -> ResponseReturnValue:
        path = socketio_client_path()
        if path is None:
            message = missing_client_message()
            log.error("%s", message)
            return Response(f"/* {message} */\n", 500, mimetype="application/javascript")
        return send_file(path, mimetype="application/javascript", max_age=300)

    @app.get("/vendor/openalgo-events-recovery.js")
    def recovery_js() -> ResponseReturnValue:
        return send_file(CLIENT_SCRIPT, mimetype="application/javascript", max_age=300)

    @app.post("/api/v1/placeorder")
    def place_order() -> ResponseReturnValue:
        data = body()
        state = demo_state(app)
        return jsonify(state.desk.place(state.user_of(data), parse_order(data, smart=False)))

    @app.post("/api/v1/placesmartorder")
    def place_smart_order() -> ResponseReturnValue:
        data = body()
        state = demo_state(app)
        return jsonify(state.desk.place_smart(state.user_of(data), parse_order(data, smart=True)))

    @app.post("/api/v1/positionbook")
    def position_book() -> ResponseReturnValue:
        state = demo_state(app)
        user = state.user_of(body())
        return jsonify(status="success",
                       data=[row for mode in MODES for row in state.desk.positions(user, mode)])

    @app.post("/api/v1/demo/mastercontract")
    def master_contract() -> ResponseReturnValue:
        """Stands in for the download that follows a broker login."""
        demo_state(app).user_of(body())
        started = time.perf_counter()
        count = len(_instruments())
        seconds = round(time.perf_counter() - started, 3)
        message = f"Master contract downloaded successfully ({count} symbols)"
        demo_state(app).publisher.publish_master_contract_download(
            BROKER, "success", message, symbols_count=count, download_time_seconds=seconds)
        return jsonify(status="success", message=message, symbols_count=count,
                       download_time_seconds=seconds)

    @app.post("/api/v1/demo/changepassword")
    def change_password() -> ResponseReturnValue:
        """Accepts a new password and announces the change; the demo stores no password."""
        data = body()
        state = demo_state(app)
        user = state.user_of(data)
        new = data.get("new_password")
        if not isinstance(new, str) or len(new) < MIN_PASSWORD:
            raise BadRequest(f"new_password must be a string of at least {MIN_PASSWORD} "
                             "characters")
        message = "Password changed successfully"
        state.publisher.publish_password_change(
            user, "success", message, ip_address=request.remote_addr or "",
            user_agent=request.headers.get("User-Agent", ""))
        return jsonify(status="success", message=message)

    @app.post("/api/v1/demo/mode")
    def switch_mode() -> ResponseReturnValue:
        """The page's mode switch: the extension's switch, behind the demo's API key (the
        admin token stays on the server; ``openalgo-events mode`` uses /openalgo-events/mode)."""
        data = body()
        state = demo_state(app)
        state.user_of(data)
        mode = data.get("mode")
        if not isinstance(mode, str) or state.events is None:
            raise BadRequest("mode must be one of SOCKETIO, KAFKA, BOTH")
        try:
            route = state.events.switch(mode)
        except ConfigError as exc:
            raise BadRequest("; ".join(exc.problems)) from None
        return jsonify(status="success", mode=route.mode.value,
                       message=f"mode {route.mode.value}")


def _join_user_room(auth: Any = None) -> None:
    """With ``auth={"apikey": ...}`` a socket joins its user's room, so that
    ``ORDER_EVENT_SOCKETIO_SCOPE=user`` works too; without it, it gets broadcasts only."""
    key = auth.get("apikey") if isinstance(auth, dict) else None
    user = demo_state(current_app).api_keys.get(key) if isinstance(key, str) else None
    if user is not None:
        join_room(user_room(user))


def _instruments() -> list[tuple[str, str, int]]:
    """A synthetic master contract: every underlying, expiry and strike, calls and puts."""
    names = ("NIFTY", "BANKNIFTY", "FINNIFTY", "SBIN", "RELIANCE", "INFY", "TCS", "HDFCBANK")
    return [(f"{name}{month:02d}{strike}{kind}", "NFO", strike)
            for name in names for month in range(1, 13)
            for strike in range(100, 5100, 100) for kind in ("CE", "PE")]
