"""The inbound consumer: ESB messages from ``KAFKA_ESB_EVENTS_TOPIC`` to handlers, at least once.

Per message: size, JSON envelope and known ``event_type`` checks, then duplicate (already
handled event id), then age and expiry checks, then the handler with bounded retries. A
message that fails a check or exhausts its retries is copied to the dead-letter topic (acks=all,
flushed) and the consumer moves on. An offset is committed only once its message was handled,
skipped as a duplicate, or dead-lettered; a crash before the commit means redelivery, which the
handled-ids store turns into a skip.

The loop runs on a real OS thread (``start``) or in the caller's thread (``run``, the CLI).
"""

from __future__ import annotations

import logging
import time
from collections import ChainMap
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from .._threads import new_event, real_threading, start_thread
from ..config import Settings
from ..envelope import Envelope
from ..errors import ConfigError, require
from ..stats import Stats
from ..transports.kafka_errors import ClientErrorLog, QuietLibrdkafkaLog
from .checks import check_fresh, dedupe_key, parse
from .dedupe import DEAD_LETTERED, HANDLED, HandledStore, position_key
from .handlers import (
    APP_HANDLERS,
    BUILTIN_HANDLERS,
    DeadLetterError,
    Handler,
    HandlerContext,
    PositionCallback,
    reconciliation_handler,
)
from .relay import BrowserRelay

log = logging.getLogger("openalgo_events.inbound")

# Tansu (and any broker) hands partitions out faster with a short session; overridable.
GROUP_DEFAULTS: dict[str, Any] = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
BATCH = 100
POLL_TIMEOUT = 0.5
LAG_EVERY = 5.0  # seconds between lag refreshes (a broker round trip)
STALLED_AFTER = 60.0  # no poll for this long (a handler stuck) reports unhealthy
MAX_ERROR_TEXT = 2000
_STOPPED = object()


class EsbConsumer:
    """Consumes ``settings.esb_events_topic`` in group ``settings.consumer_group``.

    >>> consumer = EsbConsumer(settings, publisher=publisher, socketio=socketio)  # doctest: +SKIP
    >>> consumer.register("margin_call", on_margin_call)  # doctest: +SKIP
    >>> consumer.start()  # doctest: +SKIP
    >>> consumer.health()["healthy"]  # doctest: +SKIP
    True
    """

    def __init__(self, settings: Settings, *, publisher: Any = None, socketio: Any = None,
                 handlers: Mapping[str, Handler] | None = None,
                 consumer_config: Mapping[str, Any] | None = None) -> None:
        self._ck: Any = require("confluent_kafka", "kafka")
        if not settings.bootstrap_servers:
            raise ConfigError(["the inbound consumer needs KAFKA_BOOTSTRAP_SERVERS; set it to "
                               "your brokers as host:port[,host:port]"])
        self.settings = settings
        self.topic = settings.esb_events_topic
        self.dlq_topic = settings.dlq_topic
        self.group = settings.consumer_group
        self.publisher = publisher
        self._own: dict[str, Handler] = dict(handlers or {})
        self.handlers: ChainMap[str, Handler] = ChainMap(self._own, APP_HANDLERS,
                                                         BUILTIN_HANDLERS)
        self._notifier = (BrowserRelay(socketio, scope=settings.socketio_scope)
                          if socketio is not None else None)
        self._config: dict[str, Any] = {
            "group.id": self.group,
            "auto.offset.reset": settings.auto_offset_reset,
            **GROUP_DEFAULTS,
            **settings.client_config(),
            **(consumer_config or {}),
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.auto.offset.store": False,
            "error_cb": self._on_client_error,
            "logger": QuietLibrdkafkaLog(),
        }
        self._dlq_config: dict[str, Any] = {**settings.client_config(), "acks": "all",
                                            "enable.idempotence": False, "linger.ms": 0}
        self.stats = Stats()
        self._errors = ClientErrorLog(log, "inbound consumer")
        self._stop = new_event()
        self._done = new_event()
        self._done.set()
        self._thread: Any = None
        self._loop_ident: int | None = None
        self._store: HandledStore | None = None
        self._dlq: Any = None
        self._pending: dict[tuple[str, int], int] = {}  # next offsets to commit
        # Health, written by the loop thread only.
        self.handled = 0
        self.dead_lettered = 0
        self.duplicates_skipped = 0
        self._broker_errors = 0
        self._handler_failures = 0
        self._last_poll: float | None = None
        self._lag: dict[int, int | None] = {}
        self._lag_at = 0.0
        self._partitions: set[int] = set()
        self.last_error: str | None = None
        self.crashed: str | None = None

    # -- handlers -------------------------------------------------------------------------
    def register(self, event_type: str, fn: Handler) -> Handler:
        """Handle ``event_type`` with ``fn(envelope, context)`` in this consumer."""
        self._own[event_type] = fn
        return fn

    def on_position_reconciliation(self, fn: PositionCallback) -> PositionCallback:
        """Hand ``position_reconciliation`` messages to ``fn(user_id, positions)``."""
        self.register("position_reconciliation", reconciliation_handler(fn))
        return fn

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> EsbConsumer:
        """Run on a background OS thread; returns at once."""
        if not self._done.is_set():
            return self
        self._stop.clear()
        self._done.clear()
        self._start_relay()
        self._thread = start_thread(self._loop_logged, "openalgo-events-esb-consumer")
        return self

    def run(self) -> None:
        """Run in this thread until ``stop()`` (from a signal handler or another thread)."""
        if not self._done.is_set():
            raise RuntimeError("this EsbConsumer is already running")
        self._stop.clear()
        self._done.clear()
        self._start_relay()
        self._loop()

    def _start_relay(self) -> None:
        if self._notifier is not None:
            self._notifier.start()  # in the caller's context: a green task under eventlet

    def stop(self, timeout: float = 10.0) -> bool:
        """Commit what was handled and close; True when the loop ended within ``timeout``."""
        self._stop.set()
        if self._loop_ident == real_threading().get_ident():
            return False  # called from the loop's own thread (a signal handler): it ends soon
        return bool(self._done.wait(timeout))

    def health(self) -> dict[str, Any]:
        """Liveness for a supervisor: unhealthy after ``KAFKA_CONSUMER_UNHEALTHY_AFTER``
        consecutive errors, when the loop stopped, or when it has not polled for a minute."""
        running = not self._done.is_set()
        age = None if self._last_poll is None else time.monotonic() - self._last_poll
        errors = self._broker_errors + self._handler_failures
        return {
            "healthy": running and errors < self.settings.consumer_unhealthy_after
            and (age is None or age < STALLED_AFTER),
            "running": running,
            "topic": self.topic,
            "group": self.group,
            "last_poll_age_seconds": age,
            "partitions": sorted(self._partitions),
            "lag": dict(self._lag),
            "consecutive_errors": errors,
            "handled": self.handled,
            "dead_lettered": self.dead_lettered,
            "duplicates_skipped": self.duplicates_skipped,
            "last_error": self.last_error,
            "crashed": self.crashed,
        }

    # -- the loop -------------------------------------------------------------------------
    def _loop_logged(self) -> None:
        try:
            self._loop()
        except Exception:
            log.exception("the inbound consumer stopped on an error; health reports it")

    def _loop(self) -> None:
        self._loop_ident = real_threading().get_ident()
        consumer = None
        try:
            max_age = self.settings.consumer_max_age_seconds
            self._store = HandledStore(self.settings.consumer_state_path, self.group,
                                       retention_seconds=max(86_400, 2 * max_age))
            consumer = self._ck.Consumer(self._config)
            consumer.subscribe([self.topic], on_assign=self._on_assign,
                               on_revoke=self._on_revoke, on_lost=self._on_lost)
            log.info("inbound consumer reading %s in group %s (dead letters to %s)",
                     self.topic, self.group, self.dlq_topic)
            while not self._stop.is_set():
                batch = consumer.consume(BATCH, POLL_TIMEOUT)
                self._last_poll = time.monotonic()
                self._process_batch(consumer, batch)
                self._commit(consumer)
                self._refresh_lag(consumer)
        except Exception as exc:
            self.crashed = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self._shutdown(consumer)

    def _process_batch(self, consumer: Any, batch: Sequence[Any]) -> None:
        for index, msg in enumerate(batch):
            if self._stop.is_set():
                return  # the rest is not committed: redelivered to whoever reads next
            err = msg.error()
            if err is not None:
                self._on_client_error(err)
                continue
            try:
                done = self._process(msg)
            except Exception as exc:  # our own failure (e.g. the state file): read it again
                self._broker_error(f"processing offset {msg.offset()} failed: {exc}")
                log.exception("inbound message at %s[%s]@%s not processed; it is read again",
                              msg.topic(), msg.partition(), msg.offset())
                self._rewind(consumer, batch[index:])
                self._stop.wait(1.0)
                return
            if not done:
                return
            self._pending[(msg.topic(), msg.partition())] = msg.offset() + 1

    def _rewind(self, consumer: Any, rest: Sequence[Any]) -> None:
        first: dict[tuple[str, int], int] = {}
        for msg in rest:
            if msg.error() is None:
                first.setdefault((msg.topic(), msg.partition()), msg.offset())
        for (topic, partition), offset in first.items():
            consumer.seek(self._ck.TopicPartition(topic, partition, offset))

    def _process(self, msg: Any) -> bool:
        """Handle, skip or dead-letter one message; False when stopped before it was settled.

        Its outcome is recorded before its offset is committed, so that after a crash in
        between it is skipped, not settled twice: a handled message by its event id (a copy
        of it is a duplicate), a dead-lettered one by its position (the same delivery read
        again is skipped, while its value produced again to re-drive it is processed).
        """
        value = msg.value()
        headers = tuple(msg.headers() or ())
        store = self._store
        assert store is not None
        position = position_key(msg.topic(), msg.partition(), msg.offset())
        try:
            if store.outcome(position) is not None:  # dead-lettered before a crash
                return self._skip_duplicate("dead-lettered", position)
            envelope = parse(value, max_bytes=self.settings.max_message_bytes,
                             known=self.handlers)
            key = dedupe_key(envelope, value, headers)
            if store.outcome(key) is not None:
                return self._skip_duplicate(envelope.event_type, key)
            check_fresh(envelope, value, max_age_seconds=self.settings.consumer_max_age_seconds,
                        now=datetime.now(UTC))
        except DeadLetterError as exc:
            return self._dead_letter(msg, exc.reason, exc.detail, 0, position)
        outcome = self._handle(envelope, msg, headers)
        if outcome is _STOPPED:
            return False
        if isinstance(outcome, DeadLetterError):
            return self._dead_letter(msg, outcome.reason, outcome.detail, outcome.attempts,
                                     position)
        store.add(key, HANDLED)
        self.handled += 1
        self._handler_failures = 0
        self.stats.incr("inbound_handled", event_type=envelope.event_type)
        return True

    def _skip_duplicate(self, event_type: str, key: str) -> bool:
        self.duplicates_skipped += 1
        self.stats.incr("inbound_duplicates", event_type=event_type)
        log.info("skipped %s event %s: already settled", event_type, key)
        return True

    def _handle(self, envelope: Envelope, msg: Any, headers: tuple[Any, ...]) -> object:
        """Run the handler with retries: None, a DeadLetterError (with attempts), or _STOPPED."""
        fn = self.handlers[envelope.event_type]
        delay = self.settings.consumer_retry_backoff_ms / 1000
        attempts = self.settings.consumer_max_attempts
        error = ""
        for attempt in range(1, attempts + 1):
            context = HandlerContext(self.settings, self.publisher, self._notifier, msg.topic(),
                                     msg.partition(), msg.offset(), attempt, headers)
            try:
                fn(envelope, context)
                return None
            except DeadLetterError as exc:
                exc.attempts = attempt
                return exc
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                log.warning("handler of %s event %s failed (attempt %s of %s): %s",
                            envelope.event_type, envelope.event_id, attempt, attempts, error)
            if attempt < attempts:
                if self._stop.wait(delay):
                    return _STOPPED
                delay *= 2
        self._handler_failures += 1
        self.last_error = error
        failure = DeadLetterError("handler_failed", error)
        failure.attempts = attempts
        return failure

    # -- dead letters -----------------------------------------------------------------------
    def _dead_letter(self, msg: Any, reason: str, detail: str, attempts: int, key: str) -> bool:
        """Copy ``msg`` to the dead-letter topic, durably (retried until it works or stop), then
        record its outcome under ``key`` (its position)."""
        value = msg.value()
        headers = [*(msg.headers() or ()),
                   ("dlq_reason", reason.encode()),
                   ("dlq_error", detail[:MAX_ERROR_TEXT].encode()),
                   ("dlq_attempts", str(attempts).encode()),
                   ("dlq_original_topic", msg.topic().encode()),
                   ("dlq_original_partition", str(msg.partition()).encode()),
                   ("dlq_original_offset", str(msg.offset()).encode()),
                   ("dlq_consumer_group", self.group.encode())]
        delay = max(self.settings.consumer_retry_backoff_ms / 1000, 0.1)
        while True:
            error = self._produce_dead_letter(msg.key(), value, headers)
            if error is None:
                break
            if "MSG_SIZE_TOO_LARGE" in error and value:
                headers.append(("dlq_value_dropped", str(len(value)).encode()))
                value = None  # keep the headers and key; the broker refuses the value itself
                continue
            self._broker_error(f"dead-letter topic {self.dlq_topic} refused a message: {error}")
            log.error("could not dead-letter %s[%s]@%s (%s); retrying", msg.topic(),
                      msg.partition(), msg.offset(), error)
            if self._stop.wait(delay):
                return False
            delay = min(delay * 2, 30.0)
        assert self._store is not None
        self._store.add(key, DEAD_LETTERED)
        self.dead_lettered += 1
        self.stats.incr("inbound_dead_lettered", reason=reason)
        log.warning("dead-lettered %s[%s]@%s to %s: %s: %s", msg.topic(), msg.partition(),
                    msg.offset(), self.dlq_topic, reason, detail[:200])
        return True

    def _produce_dead_letter(self, key: bytes | None, value: bytes | None,
                             headers: list[tuple[str, Any]]) -> str | None:
        if self._dlq is None:
            self._dlq = self._ck.Producer(self._dlq_config)
        reports: list[Any] = []
        try:
            self._dlq.produce(self.dlq_topic, value, key, headers=headers,
                              on_delivery=lambda err, _msg: reports.append(err))
        except Exception as exc:
            return str(exc)
        self._dlq.flush(10.0)
        if not reports:
            return "no delivery report within 10s"
        return None if reports[0] is None else f"{reports[0].name()}: {reports[0]}"

    # -- offsets and partitions -------------------------------------------------------------
    def _commit(self, consumer: Any, only: Sequence[Any] | None = None) -> None:
        wanted = None if only is None else {(tp.topic, tp.partition) for tp in only}
        offsets = [self._ck.TopicPartition(t, p, o) for (t, p), o in self._pending.items()
                   if wanted is None or (t, p) in wanted]
        if not offsets:
            return
        try:
            results = consumer.commit(offsets=offsets, asynchronous=False)
        except self._ck.KafkaException as exc:
            self._broker_error(f"commit failed: {exc}")
            log.warning("offset commit failed (the messages may be redelivered and are then "
                        "skipped as duplicates): %s", exc)
            return
        failed = [tp for tp in results or () if tp.error is not None]
        for tp in offsets:
            if not any(f.topic == tp.topic and f.partition == tp.partition for f in failed):
                self._pending.pop((tp.topic, tp.partition), None)
        if failed:
            self._broker_error(f"commit failed: {failed[0].error}")
        else:
            self._broker_errors = 0

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        log.info("inbound consumer assigned %s partitions %s", self.topic,
                 sorted(tp.partition for tp in partitions))
        self._partitions |= {tp.partition for tp in partitions}
        self._lag_at = 0.0

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        self._commit(consumer, partitions)
        self._forget(partitions)
        log.info("inbound consumer released partitions %s",
                 sorted(tp.partition for tp in partitions))

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        self._forget(partitions)
        log.warning("inbound consumer lost partitions %s (their uncommitted messages are "
                    "redelivered)", sorted(tp.partition for tp in partitions))

    def _forget(self, partitions: list[Any]) -> None:
        for tp in partitions:
            self._pending.pop((tp.topic, tp.partition), None)
        gone = {tp.partition for tp in partitions}
        self._partitions -= gone
        self._lag = {p: lag for p, lag in self._lag.items() if p not in gone}

    def _refresh_lag(self, consumer: Any) -> None:
        now = time.monotonic()
        if now - self._lag_at < LAG_EVERY:
            return
        self._lag_at = now
        lag: dict[int, int | None] = {}
        try:
            for tp in consumer.position(consumer.assignment()):
                _low, high = consumer.get_watermark_offsets(tp, timeout=1.0, cached=False)
                lag[tp.partition] = max(0, high - tp.offset) if tp.offset >= 0 else None
        except self._ck.KafkaException as exc:
            self._broker_error(f"lag query failed: {exc}")
            return
        self._lag = lag
        self._broker_errors = 0
        self._errors.ok()

    # -- errors and shutdown ----------------------------------------------------------------
    def _on_client_error(self, err: Any) -> None:
        """librdkafka's error callback and consumer error events (on the loop thread): logged
        once per state change (``ClientErrorLog``), connection chatter at debug."""
        self._broker_error(str(err))
        self._errors.error(err)

    def _broker_error(self, text: str) -> None:
        self._broker_errors += 1
        self.last_error = text

    def _shutdown(self, consumer: Any) -> None:
        try:
            if consumer is not None:
                self._commit(consumer)
                consumer.close()
            if self._dlq is not None:
                self._dlq.flush(5.0)
                self._dlq = None
            if self._notifier is not None:
                self._notifier.close(2.0)
            if self._store is not None:
                self._store.close()
                self._store = None
            log.info("inbound consumer stopped: %s handled, %s dead-lettered, %s duplicates "
                     "skipped", self.handled, self.dead_lettered, self.duplicates_skipped)
        finally:
            self._loop_ident = None
            self._partitions = set()
            self._done.set()


def run_until_signalled(consumer: EsbConsumer) -> None:
    """Run ``consumer`` in this (main) thread; SIGINT and SIGTERM stop it cleanly."""
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: consumer.stop())
    consumer.run()
