"""Kafka, through confluent-kafka (librdkafka), with no event lost.

``publish`` writes the envelope to the spool's journal, then hands it to librdkafka's local
queue in spool order (``produce`` never waits on the network); an event whose predecessor is
still being published by another thread is sent by that thread, right after it. The relay, a
real OS thread (so it never starves an eventlet worker), commits the journal to SQLite, sends
whatever callers could not (a backlog after an outage or a restart), and marks events
delivered only on the broker's delivery report.

Recovery is one mechanism: on a failed delivery, a fatal producer error, or no delivery
progress for ``stall_timeout`` seconds while events are in flight, the relay discards the
producer, builds a new one and resends everything still pending, oldest first. A consumer may
therefore see an event twice (same event id), never miss one, and sees one user's events in
publish order (their first appearances).

Errors are classified once (``kafka_errors``): transient ones recover as above; a refusal that
is permanent for one record sets that event aside in the spool as rejected, and the events
after it keep flowing; a condition permanent for every record (authentication, authorization,
the topic missing) keeps everything pending, rebuilds nothing, and is named in health and
logged once when it starts and once when it clears.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Mapping
from itertools import repeat
from typing import Any, TypeVar, cast

from .._threads import new_event, new_lock, real_sleep, start_thread, wait_until
from ..catalog import CATALOG, Catalog, Priority
from ..envelope import Envelope
from ..errors import ConfigError, require
from ..spool import Spool
from ..stats import Stats
from .kafka_errors import (
    AUTHENTICATION,
    AUTHORIZATION,
    TOPIC_MISSING,
    ErrorClass,
    QuietLibrdkafkaLog,
    classify,
    degraded,
    is_connection_noise,
)

log = logging.getLogger("openalgo_events.kafka")
_DELIVERY_LATENCY = Stats.key("delivery_latency")
T = TypeVar("T")

BATCH = 1000
MAX_IN_FLIGHT = 50_000
PURGE_EVERY = 300.0  # seconds between trail-retention purges
PROBE_EVERY = 5.0  # seconds between reachability probes while the broker looks down
BACKOFF_PROBE_EVERY = 0.5  # seconds between metadata probes during a rebuild backoff
RETRY_CHECK_EVERY = 1.0  # seconds between looks for rejected events marked for retry
MAX_WAITING = 1000  # events parked for their predecessor's thread; past that the relay sends
CALLER_POLL_AT = 1000  # events in flight from which callers serve delivery reports,
POLL_EVERY = 32  # every this many events
IDLE_WAIT = 0.05  # seconds the idle relay sleeps; it also wakes on a backlog
FLUSH_TURN = 0.005  # seconds of each relay turn spent in librdkafka's flush while one is asked
# Seconds between SQLite commits while events stream in. The journal already makes each event
# durable, so committing rows and delivery marks in batches costs no safety, only a fixed
# ~0.15 ms per commit paid less often (a crash may resend the last batch's events: duplicates).
COMMIT_EVERY = 0.1
# Queued records or delivery marks that make a commit due sooner. Larger batches write more
# records once (delivered already) instead of twice, but a commit of thousands of rows holds the
# relay for tens of milliseconds, and at max rate 1,000 measured faster than 3,000 (bench/README).
COMMIT_AT = 1000


def _drain(queue: deque[T]) -> list[T]:
    """What ``queue`` holds now, oldest first; items appended meanwhile stay for next time."""
    return [queue.popleft() for _ in range(len(queue))]


def _report_type(transport: KafkaTransport, generation: int) -> type[int]:
    """The delivery callback type for one producer's events.

    Each event's callback is its spool sequence number, an instance of this ``int`` subclass:
    with thousands of events in flight, closures would be objects for the garbage collector to
    track and scan; these are not.
    """
    delivered, failed = transport._delivered.append, transport._failed.append

    class DeliveryReport(int):
        __slots__ = ()

        def __call__(self, err: Any, msg: Any) -> None:
            if err is None:
                delivered(self)
            elif generation == transport._generation:  # else purged from a replaced producer
                failed((self, err, msg))

    return DeliveryReport


def _event_id(msg: Any) -> str:
    """The event id of a message whose delivery failed, read from its value (a delivery report
    carries no headers)."""
    try:
        return str(json.loads(msg.value())["event_id"])
    except (TypeError, ValueError, KeyError):
        return "?"


def _error_name(err: Any) -> str:
    try:
        return str(err.name())
    except AttributeError:
        return type(err).__name__


class KafkaTransport:
    """Publishes envelopes to one Kafka topic, keyed by user id, through a spool.

    >>> transport = KafkaTransport({"bootstrap.servers": "localhost:9092"},
    ...                            "from_openalgo_order_events", spool=Spool("events.db"))
    """

    name = "kafka"

    def __init__(
        self,
        producer_config: Mapping[str, Any],
        topic: str,
        *,
        spool: Spool | None = None,
        stall_timeout: float = 10.0,
        catalog: Catalog = CATALOG,
        stats: Stats | None = None,
    ) -> None:
        self._ck: Any = cast(Any, require("confluent_kafka", "kafka"))
        self.topic = topic
        self.stats = stats or Stats()
        self.spool = spool or Spool(":memory:", stats=self.stats)
        self._catalog = catalog
        self._config = {"acks": "all", "enable.idempotence": True, **producer_config}
        self._config["error_cb"] = self._on_error
        self._config["logger"] = QuietLibrdkafkaLog()
        self._stall_timeout = stall_timeout
        self._wake = new_event()
        self._stop = new_event()  # set by close: cuts a rebuild backoff short
        self._stopping = False
        self._stop_deadline = 0.0
        self._flushes = 0  # flush calls waiting: the relay then sends without lingering
        self._thread: Any = None
        # Relay state: the producer, cursor and in-flight map change under the produce lock.
        self._producer: Any = None
        self._generation = 0
        self._produce_lock = new_lock()  # guards the producer swap, the cursor and _paused
        self._paused = False  # while the producer is being rebuilt
        self._cursor = 0
        # Set when there may be events callers could not produce (at start, after a rebuild, a
        # full queue): the relay then reads them from the spool, until it has caught up.
        self._behind = True
        self._cursor_seen = -1  # the cursor at the relay's last turn
        # seq -> an event (``_produce``'s arguments) whose predecessor is on its way
        self._waiting: dict[int, tuple[Any, ...]] = {}
        self._in_flight: dict[int, float] = {}
        # Reports collected by poll, on any thread: deques, appended and drained one item at a
        # time, so a report arriving while the relay drains is never dropped.
        self._delivered: deque[int] = deque()
        self._to_mark: list[int] = []  # delivered, to be marked in SQLite at the next commit
        self._failed: deque[tuple[int, Any, Any]] = deque()  # seq, error, message
        # Events Kafka refused for good, to set aside in the spool on the relay: (seq, reason)
        self._rejects: deque[tuple[int, str]] = deque()
        self._state_lock = new_lock()  # the global condition and the broker state, logged once
        self.condition: str | None = None  # a global condition: nothing is sent while it lasts
        self._condition_detail = ""
        self._last_condition_probe = 0.0
        self.condition_probes = 0  # metadata requests made while a condition held
        self._down_since = 0.0
        self._warned: set[str] = set()  # other client errors logged once until a recovery
        self._failures_logged = False  # a failed delivery logged since the last recovery
        self._limit_checked = False
        self._last_retry_check = 0.0
        self._rebuild_reason: str | None = None
        self._report = _report_type(self, 0)
        self._backoff = 0.5
        self._last_progress = self._last_purge = self._last_probe = time.monotonic()
        self._last_commit = 0.0
        self.broker_up: bool | None = None
        self.last_error: str | None = None
        # A cluster-wide problem no resend fixes (authentication, the topic missing): logged at
        # ERROR once per change, shown in health until a delivery succeeds.
        self.problem: str | None = None
        self.rebuilds = 0
        try:
            self._producer = self._ck.Producer(self._config)  # no I/O yet: the relay warms it up
        except self._ck.KafkaException as exc:
            raise ConfigError([f"librdkafka refused the producer settings ({exc}); check the "
                               "KAFKA_* and KAFKA_LIBRDKAFKA_* variables"]) from exc
        self._thread = start_thread(self._run, "openalgo-events-kafka-relay")

    # -- caller side ----------------------------------------------------------------------
    def publish(self, envelope: Envelope) -> None:
        event_type = envelope.event_type
        seq = self.spool.append(envelope, self.topic, self._priority(event_type))
        if seq is None:
            return  # shed by the overflow policy (counted and logged by the spool)
        self.stats.add(Stats.event_key("published", event_type, self.name))
        key, value, headers, created = envelope.key, envelope.value, envelope.headers(), time.time()
        with self._produce_lock:
            # Produced here, in spool order: librdkafka's produce never waits on the network.
            # An event whose predecessor another thread is still publishing waits for that
            # thread to send it next; a backlog (outage, recovery) is the relay's to send.
            if self._paused or self.condition:
                handed_over = False
            elif seq == self._cursor + 1:
                handed_over = self._produce(seq, self.topic, key, value, headers, created)
                while handed_over and self._cursor + 1 in self._waiting:
                    handed_over = self._produce(*self._waiting.pop(self._cursor + 1))
                if handed_over and not seq % POLL_EVERY and (
                        len(self._in_flight) >= CALLER_POLL_AT):
                    # A caller publishing flat out serves delivery reports itself, like a plain
                    # producer loop: served on the relay, each report would wait for the GIL.
                    # (Not on every call: poll releases the GIL, costly among many threads.)
                    self._producer.poll(0)
            else:
                handed_over = len(self._waiting) < MAX_WAITING
                if handed_over:
                    self._waiting[seq] = (seq, self.topic, key, value, headers, created)
        if not handed_over:
            self._behind = True
            self._wake.set()

    def hand_over(self, events: list[tuple[int, str, bytes, bytes, list[tuple[str, bytes]],
                                           float]]) -> None:
        """Produce events already queued in the spool, in spool order: ``(seq, topic, key,
        value, headers, created)``, as the relay process reads them from the writers' journals
        (``Spool.adopt``). What cannot go now (a gap, a full queue, a rebuild) is read back
        from the spool by the relay thread."""
        with self._produce_lock:
            self.hand_over_locked(events)

    def hand_over_locked(self, events: list[tuple[int, str, bytes, bytes,
                                                  list[tuple[str, bytes]], float]]) -> None:
        """``hand_over``, for a caller holding ``produce_lock`` since it queued the events in
        the spool: the relay thread then never finds them queued and not yet handed over,
        which would send it reading them back from SQLite."""
        behind = False
        for event in events:
            if self._paused or event[0] != self._cursor + 1 or not self._produce(*event):
                behind = True
                break
            while self._cursor + 1 in self._waiting and self._produce(
                    *self._waiting.pop(self._cursor + 1)):
                pass
        if behind:
            self._behind = True
        self._wake.set()

    @property
    def produce_lock(self) -> Any:
        """Held while the producer, the cursor or the queue of events to send change."""
        return self._produce_lock

    def _priority(self, event_type: str) -> Priority:
        spec = self._catalog.get(event_type)
        return spec.priority if spec else Priority.HIGH

    def flush(self, timeout: float = 5.0) -> int:
        with self._produce_lock:
            self._flushes += 1
        self._wake.set()
        try:
            wait_until(lambda: self.spool.depth == 0, timeout, step=0.001)
        finally:
            with self._produce_lock:
                self._flushes -= 1
        return self.spool.depth

    def close(self, timeout: float = 5.0) -> int:
        """Deliver what can be in ``timeout``; the rest stays in the spool for the next start.

        The relay thread is stopped before the spool is closed (a rebuild backoff wakes at
        once); should it still run after ``timeout`` + 5 s, the spool is left open to it (its
        journal keeps every event) rather than closed under it.
        """
        if self._thread is None:
            return self.spool.depth
        self._stop_deadline = time.monotonic() + timeout
        self._stopping = True
        self._stop.set()
        self._wake.set()
        if not wait_until(lambda: not self._thread.is_alive(), timeout + 5.0):
            log.warning("the Kafka relay did not stop within %s s; the spool %s is left open "
                        "to it, and its events are sent at the next start", timeout + 5.0,
                        self.spool.path)
            return self.spool.depth
        left = self.spool.depth
        if left:
            where = "lost (in-memory spool)" if self.spool.path == ":memory:" else (
                f"kept in {self.spool.path}; they are sent at the next start")
            log.warning("closing with %s events undelivered: %s", left, where)
        self.spool.close()
        self._thread = None
        return left

    def delivery_state(self) -> dict[str, Any]:
        """What the producer knows, cheaply (no spool query): ``delivering`` is False while the
        brokers are unreachable, a global condition holds or a named problem lasts."""
        return {
            "delivering": (self.broker_up is not False and not self.condition
                           and self.problem is None),
            "broker_reachable": self.broker_up,
            "in_flight": len(self._in_flight),
            "producer_rebuilds": self.rebuilds,
            "last_error": self.last_error,
            # a global condition ("authentication failed", "authorization failed", "topic
            # missing"), None when there is none; its detail says what to do
            "condition": self.condition,
            "condition_detail": self._condition_detail or None,
            # a transient reason deliveries fail (NOT_ENOUGH_REPLICAS), None once one succeeds
            "problem": self.problem,
        }

    def health(self) -> dict[str, Any]:
        status = self.spool.status()
        state = self.delivery_state()
        healthy = state.pop("delivering") and not (
            status.oldest_pending_age is not None
            and status.oldest_pending_age > max(self._stall_timeout, 30.0))
        return {
            "transport": self.name,
            "healthy": healthy,
            "topic": self.topic,
            "spool_path": status.path,
            "spool_depth": status.depth,
            "spool_pending_bytes": status.pending_bytes,
            "spool_over_limit": status.over_limit,
            "spool_shed": status.shed,
            "spool_rejected": status.rejected,
            "oldest_pending_age_seconds": status.oldest_pending_age,
            **state,
        }

    # -- relay thread -------------------------------------------------------------------------
    def _run(self) -> None:
        self._warm()
        self._last_purge = self._last_probe = time.monotonic()
        while not (self._stopping and (self.spool.depth == 0
                                       or time.monotonic() > self._stop_deadline)):
            try:
                self._step()
            except Exception as exc:  # the relay must outlive any surprise; events stay spooled
                self.last_error = f"relay error: {exc}"
                log.exception("Kafka relay error; retrying in 1 s (events stay in the spool)")
                real_sleep(1.0)
        self._producer.flush(max(0.0, self._stop_deadline - time.monotonic()))
        self._settle(commit=True)
        self._producer.purge(in_queue=True, in_flight=True, blocking=False)
        self._producer.poll(0)
        self._producer = None  # destroyed here, on the relay thread: no reconnect attempts linger

    def _step(self) -> None:
        """One turn of the relay: recover if needed, send, collect reports, housekeeping."""
        if self._rebuild_reason:
            self._rebuild()
        self._wake.clear()
        sent = self._send_pending()
        flushing = bool(self._in_flight) and bool(self._flushes or self._stopping)
        if flushing:
            # librdkafka sends at once, ignoring linger.ms, while a flush call is running
            self._producer.flush(FLUSH_TURN)
        else:
            self._producer.poll(0)
        self._settle()
        now = time.monotonic()
        if self.condition:
            if now - self._last_condition_probe > PROBE_EVERY:
                self._last_condition_probe = now
                self._probe_condition()
        elif self._in_flight and now - self._last_progress > self._stall_timeout:
            self._rebuild_reason = (f"no delivery report for {now - self._last_progress:.0f}s "
                                    f"with {len(self._in_flight)} events in flight")
        if now - self._last_retry_check > RETRY_CHECK_EVERY:
            self._last_retry_check = now
            for event_id, seq in self.spool.requeue_retries():
                self._behind = True
                log.warning("rejected event %s queued again for sending (spool #%s)", event_id,
                            seq)
        if now - self._last_purge > PURGE_EVERY:
            self._last_purge = now
            self.spool.purge_expired()
        if not self._in_flight and self.broker_up is False and now - self._last_probe > PROBE_EVERY:
            self._last_probe = now
            self._warm()
        if not (sent or flushing):
            self._wake.wait(0.005 if self._in_flight else IDLE_WAIT)

    def _send_pending(self) -> int:
        """Produce, in spool order, what the callers could not produce directly.

        Once the cursor reaches the newest spooled event, callers produce directly again.
        """
        if self.condition:
            return 0  # nothing is sent until the condition clears (see _probe_condition)
        with self._produce_lock:  # so that a hand-over under way is not mistaken for a gap
            if self._cursor == self._cursor_seen and (self._waiting
                                                      or self.spool.last_seq > self._cursor):
                # Spooled events nobody is producing: parked ones whose predecessor never came,
                # or ones not appended through publish (a replay). Sent from here.
                self._behind = True
            self._cursor_seen = self._cursor
            if not self._behind:
                return 0  # callers produced everything themselves
            if len(self._in_flight) >= MAX_IN_FLIGHT:
                return 0
            sent = 0
            backlog = self.spool.pending(self._cursor, BATCH)
            for e in backlog:
                if not self._produce(e.seq, e.topic, e.key, e.value, e.headers, e.created):
                    return sent
                sent += 1
            if len(backlog) < BATCH:  # everything committed is now delivered or in flight
                self._cursor = max(self._cursor, self.spool.committed_seq)
                self._behind = False
            for seq in [seq for seq in self._waiting if seq <= self._cursor]:
                del self._waiting[seq]  # sent from the spool meanwhile
            while self._cursor + 1 in self._waiting and self._produce(
                    *self._waiting.pop(self._cursor + 1)):
                sent += 1  # parked after the spool read, sent next in order
            return sent

    def _produce(self, seq: int, topic: str, key: bytes, value: bytes,
                 headers: list[tuple[str, bytes]], created: float) -> bool:
        """Hand one event to librdkafka, under the produce lock; False when it must wait."""
        try:
            self._producer.produce(topic, value, key, headers=headers,
                                   on_delivery=self._report(seq))
        except BufferError:
            return False  # librdkafka's queue is full: the relay catches up from the cursor
        except self._ck.KafkaException as exc:  # refused at produce: classified
            err = exc.args[0] if exc.args else exc
            kind, meaning = classify(err)
            if kind is ErrorClass.MESSAGE:
                self._rejects.append((seq, f"{_error_name(err)} at produce: {meaning} ({err})"))
                self._cursor = seq  # passed over: the events after it keep flowing
                return True
            if kind is ErrorClass.GLOBAL:
                self._enter_condition(meaning, str(err))
            else:
                self._rebuild_reason = f"produce failed: {err}"
            return False
        except (TypeError, ValueError) as exc:  # arguments librdkafka cannot take: this record
            self._rejects.append((seq, f"produce refused the record: {exc}"))
            self._cursor = seq
            return True
        except Exception as exc:  # anything else: rebuild and retry, as for a transient error
            self._rebuild_reason = f"produce failed: {exc}"
            return False
        if not self._in_flight:  # the stall clock starts with the first event in flight
            self._last_progress = time.monotonic()
        self._cursor = seq
        self._in_flight[seq] = created
        return True

    def _settle(self, commit: bool = False) -> None:
        """Record delivery reports collected by the last poll; commit them with the records
        callers journaled when a commit is due (reports at once when nothing else is in flight,
        so ``flush`` returns promptly)."""
        if self._delivered:
            done = _drain(self._delivered)
            self._to_mark += done
            now, in_flight = time.time(), self._in_flight
            self.stats.observe_all(_DELIVERY_LATENCY, [
                now - created for created in map(in_flight.pop, done, repeat(None))
                if created is not None])
            self._last_progress = time.monotonic()
            if self.broker_up is not True or self.condition:
                self._recovered()
            self._backoff = 0.5
            if self.problem is not None:
                log.warning("Kafka deliveries succeed again (was: %s)", self.problem)
                self.problem = None
        queued, marks = self.spool.queued, len(self._to_mark)
        if (queued or marks) and (commit or (marks and not self._in_flight)
                                  or max(queued, marks) >= COMMIT_AT
                                  or time.monotonic() - self._last_commit >= COMMIT_EVERY):
            self._commit()
        if self._failed:
            self._classify_failures(_drain(self._failed))
        if self._rejects:
            self._set_aside(_drain(self._rejects))

    def _classify_failures(self, failed: list[tuple[int, Any, Any]]) -> None:
        """Delivery reports with an error: one record refused for good is set aside; a global
        condition is entered (the events stay in flight, resent when it clears); anything else
        rebuilds the producer. One log line per batch, not one per event."""
        retry: list[tuple[int, Any, Any]] = []
        for seq, err, msg in failed:
            kind, meaning = classify(err)
            if kind is ErrorClass.MESSAGE:
                self._in_flight.pop(seq, None)
                self._rejects.append((seq, f"{_error_name(err)}: {meaning} ({err})"))
            elif kind is ErrorClass.GLOBAL:
                self._enter_condition(meaning, str(err))
            else:
                retry.append((seq, err, msg))
        if not retry:
            return
        reason = next(filter(None, (degraded(err) for _, err, _ in retry)), None)
        if reason:
            self._set_problem(reason, "Kafka refuses writes to %s: %s. Events are kept in the "
                              "spool and sent once enough replicas are back.", self.topic, reason)
        self.stats.incr("failed", len(retry), transport=self.name)
        seq, err, msg = retry[0]
        self.last_error = str(err)
        # During an outage or a condition (reported once already) only the first batch of
        # failures is worth a line: the rest would flood the log, one batch per retry.
        if self.broker_up is False or self.condition:
            level = logging.DEBUG if self._failures_logged else logging.WARNING
        else:
            level = logging.ERROR
        self._failures_logged = True
        log.log(level, "delivery of event %s (spool #%s) failed: %s; it and %s more stay in the "
                "spool and are resent", _event_id(msg), seq, err, len(retry) - 1)
        if not self.condition:
            self._rebuild_reason = f"delivery failed: {err}"

    def _set_aside(self, rejects: list[tuple[int, str]]) -> None:
        """Move events Kafka refused for good into the spool's rejected table."""
        for seq, reason in rejects:
            found = self.spool.reject(seq, reason)
            if found is None:
                continue  # delivered meanwhile, or set aside already
            event_id, event_type = found
            self.stats.incr("rejected", event_type=event_type, transport=self.name)
            self.last_error = f"event {event_id} rejected: {reason}"
            log.error("Kafka refused %s event %s (spool #%s) for good: %s. It is set aside as "
                      "rejected and the events after it are sent; fix the cause, then run "
                      "'openalgo-events spool retry %s'", event_type, event_id, seq, reason,
                      event_id)

    def _commit(self) -> None:
        """Commit journaled records and delivery marks to SQLite, in one transaction."""
        marks, self._to_mark = self._to_mark, []
        try:
            counts = self.spool.mark_delivered(marks)
        except BaseException:
            self._to_mark[:0] = marks  # kept for the next attempt
            raise
        for event_type, count in counts.items():
            self.stats.incr("delivered", count, event_type=event_type, transport=self.name)
        self._last_commit = time.monotonic()

    def _on_error(self, err: Any) -> None:
        """librdkafka's error callback (runs inside poll): one log line per state change, the
        per-connection chatter at debug."""
        self.last_error = str(err)
        kind, meaning = classify(err)
        if kind is ErrorClass.GLOBAL:
            self._enter_condition(meaning, str(err))
        elif err.code() == self._ck.KafkaError._ALL_BROKERS_DOWN:
            self._set_down(str(err))
        elif err.fatal():
            self._rebuild_reason = f"fatal producer error: {err}"
        elif is_connection_noise(err):
            log.debug("Kafka client: %s", err)
        else:
            name = _error_name(err)
            with self._state_lock:
                first = name not in self._warned
                self._warned.add(name)
            log.log(logging.WARNING if first else logging.DEBUG, "Kafka client error: %s", err)

    # -- broker state and global conditions: logged once per change ---------------------------
    def _set_down(self, reason: str) -> None:
        with self._state_lock:
            was, self.broker_up = self.broker_up, False
            if was is not False:
                self._down_since = time.monotonic()
            quiet = was is False or self.condition == AUTHENTICATION  # not "unreachable"
        if not quiet:
            log.warning("Kafka brokers unreachable (%s); events are kept in the spool and sent "
                        "when they are back", reason)

    def _recovered(self) -> None:
        """A delivery or a metadata answer: the brokers are up, and any condition is over."""
        with self._state_lock:
            was, self.broker_up = self.broker_up, True
            self._warned.clear()
            self._failures_logged = False
            down_for = time.monotonic() - self._down_since
        if was is False:
            log.warning("Kafka brokers reachable again after %ss; sending %s pending events",
                        round(down_for), self.spool.depth)
        if self.condition:
            self._clear_condition()

    def _enter_condition(self, name: str, detail: str) -> None:
        hint = {
            TOPIC_MISSING: f"create topic {self.topic} with 'openalgo-events topics create' "
                           "(the brokers do not create it)",
            AUTHENTICATION: "check KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and "
                            "KAFKA_SASL_PASSWORD (and KAFKA_SECURITY_PROTOCOL)",
            AUTHORIZATION: f"grant this principal Write and Describe on topic {self.topic} "
                           "(and IdempotentWrite on the cluster)",
        }.get(name, "check the KAFKA_* and KAFKA_LIBRDKAFKA_* settings")
        with self._state_lock:
            if self.condition == name:
                return
            self.condition, self._condition_detail = name, f"{detail}; {hint}"
            self._last_condition_probe = time.monotonic()
        self.last_error = f"{name}: {detail}"
        log.error("Kafka %s for topic %s (%s): no event is sent until this is fixed, and every "
                  "event is kept in the spool (%s pending); %s", name, self.topic, detail,
                  self.spool.depth, hint)

    def _clear_condition(self) -> None:
        with self._state_lock:
            name, self.condition, self._condition_detail = self.condition, None, ""
        if name is None:
            return
        log.warning("Kafka %s for topic %s is over; sending the %s pending events in order",
                    name, self.topic, self.spool.depth)
        # Once: what librdkafka held while the condition lasted is resent from the spool.
        self._rebuild_reason = f"{name} cleared"
        self._backoff = 0.0

    def _probe_condition(self) -> None:
        """While a condition lasts: ask for the topic's metadata; it is over when the topic is
        there and readable (no rebuild, no produce until then)."""
        self.condition_probes += 1
        try:
            metadata = self._producer.list_topics(self.topic, timeout=2.0)
        except Exception:
            return  # no answer: still down, or still refused
        error = metadata.topics[self.topic].error if self.topic in metadata.topics else None
        if error is not None:
            kind, meaning = classify(error)
            if kind is ErrorClass.GLOBAL and meaning != self.condition:
                self._clear_condition()
                self._enter_condition(meaning, str(error))
            return
        self._recovered()

    def _set_problem(self, problem: str, message: str, *args: Any) -> None:
        """Record a cluster-wide problem; ERROR once per change of problem, not per retry."""
        self.last_error = problem
        if problem != self.problem:
            self.problem = problem
            log.error(message, *args)

    def _warm(self) -> None:
        """Connect and fetch metadata now, so the first event does not pay for it; a missing
        or forbidden topic is a global condition from the start."""
        try:
            metadata = self._producer.list_topics(self.topic, timeout=2.0)
        except Exception as exc:
            self.last_error = str(exc)
            self._set_down(str(exc))
            return
        if self.broker_up is not True:
            self._recovered()
        topic = metadata.topics.get(self.topic)
        error = topic.error if topic is not None else None
        if error is not None:
            kind, meaning = classify(error)
            if kind is ErrorClass.GLOBAL:
                self._enter_condition(meaning, str(error))
        elif not self._limit_checked:
            self._limit_checked = True
            self._check_topic_limit()

    def _check_topic_limit(self) -> None:
        """Warn once when the topic takes smaller records than publish accepts: those would be
        refused by the broker and set aside as rejected."""
        from .kafka_limits import topic_limit_problem

        conf = {k: v for k, v in self._config.items() if k != "error_cb"}  # logger kept: quiet
        problem = topic_limit_problem(conf, self.topic, int(conf.get("message.max.bytes", 0)))
        if problem:
            log.warning("%s", problem)

    def _cluster_view(self, producer: Any, timeout: float) -> tuple[int, ...] | None:
        """What ``producer`` sees of the cluster: (brokers, partitions of the topic with a
        leader, in-sync replicas over them), or None when no broker answers in ``timeout``."""
        try:
            metadata = producer.list_topics(self.topic, timeout=timeout)
        except Exception:
            return None
        topic = metadata.topics.get(self.topic)
        partitions = list(topic.partitions.values()) if topic is not None else []
        return (len(metadata.brokers), sum(p.leader >= 0 for p in partitions),
                sum(len(p.isrs) for p in partitions))

    def _pause_until_cluster_changes(self, pause: float) -> None:
        """The rebuild backoff: wait ``pause`` seconds, but end it as soon as the cluster shows
        more of itself than at the start (a broker back, a leader elected, a replica in sync),
        asked every ``BACKOFF_PROBE_EVERY`` seconds. A long backoff would otherwise sleep
        through the cluster's return (up to 30 s). close() wakes it too.

        The probe is a client of its own, made for this pause with a short reconnect backoff:
        the old producer's reconnect backoff (up to ``reconnect.backoff.max.ms``, 10 s by
        default) would hide the return as long as the pause itself."""
        deadline = time.monotonic() + pause
        if pause < 2 * BACKOFF_PROBE_EVERY:
            self._stop.wait(pause)
            return
        conf = {k: v for k, v in self._config.items() if k != "error_cb"}  # logger kept: quiet
        try:
            probe = self._ck.Producer({**conf, "reconnect.backoff.ms": 100,
                                       "reconnect.backoff.max.ms": 500})
        except Exception:  # the producer's own settings: not expected to fail; just wait
            self._stop.wait(pause)
            return
        # Brokers unreachable when the rebuild began: any answer is their return (even the
        # first one: they may be back already). Reachable (a stall with the cluster up, such as
        # NOT_ENOUGH_REPLICAS): the start is what a return must improve on.
        before = None if self.broker_up is False else self._cluster_view(
            probe, BACKOFF_PROBE_EVERY)
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            now = self._cluster_view(probe, min(BACKOFF_PROBE_EVERY, max(0.01, left)))
            if now is not None and (before is None or any(
                    a > b for a, b in zip(now, before, strict=True))):
                log.debug("the Kafka cluster answers again (%s -> %s: brokers, partitions "
                          "led, in-sync replicas); the producer is rebuilt now, not after the "
                          "rest of its %s s backoff", before, now, pause)
                return
            if now is not None and before is not None:
                # worse meanwhile (another broker gone): a return from there counts too
                before = tuple(min(a, b) for a, b in zip(now, before, strict=True))
            self._stop.wait(min(BACKOFF_PROBE_EVERY, max(0.0, deadline - time.monotonic())))

    def _rebuild(self) -> None:
        reason, self._rebuild_reason = self._rebuild_reason, None
        self.rebuilds += 1
        # expected while the brokers are down (reported once already): not a warning then
        log.log(logging.DEBUG if self.broker_up is False else logging.WARNING,
                "rebuilding the Kafka producer (%s); resending %s pending events", reason,
                self.spool.depth)
        self.stats.incr("producer_rebuilds", transport=self.name)
        with self._produce_lock:
            self._paused = True
            self._generation += 1  # reports of the old producer's purged messages: not failures
            self._report = _report_type(self, self._generation)
            old = self._producer
            old.purge(in_queue=True, in_flight=True, blocking=False)
        old.poll(0)
        self._settle(commit=True)
        pause = self._backoff
        if self._stopping:
            pause = max(0.0, min(pause, self._stop_deadline - time.monotonic()))
        self._pause_until_cluster_changes(pause)
        self._backoff = min(max(self._backoff, 0.25) * 2, 30.0)
        producer = self._ck.Producer(self._config)
        with self._produce_lock:
            self._producer = producer
            self._cursor = 0
            self._behind = True
            self._in_flight.clear()
            self._waiting.clear()  # everything pending is resent from the spool
            self._paused = False
        self._last_progress = time.monotonic()
        # The old client is destroyed on a thread of its own: librdkafka's destroy waits for its
        # broker threads, which can take as long as a request timeout while brokers are down or
        # hold requests (NOT_ENOUGH_REPLICAS), and the relay must keep sending meanwhile.
        doomed = [old]
        del old
        start_thread(doomed.clear, "openalgo-events-kafka-destroy")
