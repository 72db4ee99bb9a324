"""The relay's Kafka producer: librdkafka, delivery reports, and recovery, on a thread of its own.

The relay's main loop hands records over with ``send`` (librdkafka's ``produce``, which never
waits on the network) and collects the outcome with ``results``; this module's thread blocks in
``poll`` until delivery reports arrive, then wakes the main loop. Everything that may block on
the network (metadata probes, the rebuild backoff, destroying an old client) happens here, so
the main loop keeps reading journals, answering health and writing its ledger meanwhile.

Recovery is one mechanism: on a failed delivery, a fatal producer error, or no delivery report
for ``stall_timeout`` seconds while records are in flight, the producer is purged and rebuilt and
``generation`` moves on; the main loop then resends everything not acknowledged, in order, from
its journals. A consumer may see a record twice (same event id), never miss one.

Errors are classified once (``transports.kafka_errors``): transient ones recover as above; a
condition that refuses every record (authentication, authorization, the topic missing) stops
sending, rebuilds nothing, probes the topic every ``PROBE_EVERY`` seconds and is logged once
when it starts and once when it clears; a refusal of one record is ``refused``. The broker
refuses a whole batch for one bad record, and librdkafka then reports every record of the
batch with that error, so a refusal is first only a suspicion: the producer is rebuilt
*isolating* (one record per batch, ``batch.num.messages=1``), the records are resent, and a
record refused on its own is refused for good (``results``' third field). The relay asks for the
normal producer back once its suspects are settled (``end_isolation``): when nothing is in flight
it is swapped in, so the swap itself resends nothing.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

from .._threads import new_event, new_lock, start_thread
from ..envelope import utc_timestamp
from ..errors import ConfigError, require
from ..stats import Stats
from ..transports.kafka_errors import (
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

POLL_WAIT = 0.5  # seconds the thread blocks in poll when nothing arrives
PROBE_EVERY = 5.0  # seconds between metadata probes while the brokers look down or a condition
BACKOFF_PROBE_EVERY = 0.5  # seconds between metadata probes during a rebuild backoff
MAX_BACKOFF = 30.0
# What makes each record its own batch: a refusal then names only the record that caused it.
ISOLATING = {"batch.num.messages": 1, "linger.ms": 0,
             "max.in.flight.requests.per.connection": 1}


class Report(int):
    """A record's delivery callback and its token (the relay's key for it): an ``int``, so
    thousands in flight are not objects the garbage collector scans."""

    __slots__ = ()
    producer: Producer
    generation: int
    isolating: bool

    def __call__(self, err: Any, msg: Any) -> None:
        producer = self.producer
        if self.generation != producer.generation:
            return  # purged from a replaced client: the relay resends it anyway
        if err is None:
            producer._delivered.append(self)
        else:
            producer._failed.append((self, err))
        producer._reported += 1


def _report_type(producer: Producer, generation: int, isolating: bool) -> type[Report]:
    return cast(type[Report], type("Report", (Report,), {
        "__slots__": (), "producer": producer, "generation": generation,
        "isolating": isolating}))


def error_name(err: Any) -> str:
    try:
        return str(err.name())
    except AttributeError:
        return type(err).__name__


def check_config(config: Mapping[str, Any]) -> None:
    """Build (and drop) a client with ``config`` but no broker, to have librdkafka judge every
    property now: a property it refuses stops the app's start-up with a ``ConfigError`` rather
    than the relay's, later, in a log the app never reads. Connects nowhere."""
    ck: Any = cast(Any, require("confluent_kafka", "kafka"))
    try:
        client = ck.Producer({**config, "bootstrap.servers": "", "logger": QuietLibrdkafkaLog()})
    except ck.KafkaException as exc:
        raise ConfigError([f"librdkafka refused the producer settings ({exc}); check the "
                           "KAFKA_LIBRDKAFKA_* variables"]) from exc
    del client


class Producer:
    """Produces to one topic; ``wake`` is called (from this module's thread) when results wait.

    >>> producer = Producer({"bootstrap.servers": "localhost:9092"}, "orders", Stats(),
    ...                     wake=lambda: None)  # doctest: +SKIP

    Raises ``ConfigError`` when librdkafka refuses the configuration.
    """

    def __init__(self, config: Mapping[str, Any], topic: str, stats: Stats, *,
                 wake: Callable[[], None], stall_timeout: float = 10.0) -> None:
        self._ck: Any = cast(Any, require("confluent_kafka", "kafka"))
        self.topic = topic
        self.stats = stats
        self._wake = wake
        self._stall_timeout = stall_timeout
        self._config = {"acks": "all", "enable.idempotence": True, **config,
                        "error_cb": self._on_error, "logger": QuietLibrdkafkaLog()}
        self._lock = new_lock()  # guards the client swap and ``_paused``
        self._stop = new_event()
        self._closing = False
        self._close_deadline = 0.0
        self._paused = False
        self.generation = 0
        self.isolating = False
        self._isolate_next = False
        self._end_isolation = False
        self._report = _report_type(self, 0, False)
        self._token = 0
        self._sent = 0  # records handed to the current client (the main loop's count)
        self._reported = 0  # of them, reported (the poll thread's count)
        self._delivered: deque[Report] = deque()
        self._failed: deque[tuple[Report, Any]] = deque()
        self._refused: deque[tuple[int, str, bool]] = deque()
        self._rebuild_reason: str | None = None
        self._backoff = 0.5
        self._last_progress = time.monotonic()
        self._last_probe = 0.0
        self._warned: set[str] = set()
        self._failures_logged = False
        self._down_since = 0.0
        self._limit_checked = False
        # what health shows
        self.broker_up: bool | None = None
        self.condition: str | None = None
        self.condition_detail: str | None = None
        self.problem: str | None = None  # a named transient reason (NOT_ENOUGH_REPLICAS)
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.rebuilds = 0
        self.condition_probes = 0
        try:
            self._client: Any = self._ck.Producer(self._config)
        except self._ck.KafkaException as exc:
            raise ConfigError([f"librdkafka refused the producer settings ({exc}); check the "
                               "KAFKA_* and KAFKA_LIBRDKAFKA_* variables"]) from exc
        self._thread = start_thread(self._run, "openalgo-events-kafka")

    # -- the main loop's side -----------------------------------------------------------------
    @property
    def accepting(self) -> bool:
        """Whether ``send`` may be called now (not rebuilding, no condition, no swap due)."""
        return not (self._paused or self.condition or self._end_isolation or self._closing)

    @property
    def in_flight(self) -> int:
        return self._sent - self._reported

    def send(self, key: bytes, value: bytes, headers: list[tuple[str, bytes]],
             timestamp_ms: int) -> int | str | None:
        """Hand one record to librdkafka: its token (an int), None when it must wait (queue
        full, rebuilding), or a reason (a str) when librdkafka refuses this record for good at
        produce (it is then not in flight)."""
        with self._lock:
            if self._paused:
                return None
            self._token += 1
            report = self._report(self._token)
            try:
                self._client.produce(self.topic, value, key, headers=headers,
                                     timestamp=timestamp_ms, on_delivery=report)
            except BufferError:
                return None
            except self._ck.KafkaException as exc:
                err = exc.args[0] if exc.args else exc
                kind, meaning = classify(err)
                if kind is ErrorClass.MESSAGE:
                    return f"{error_name(err)} at produce: {meaning} ({err})"
                if kind is ErrorClass.GLOBAL:
                    self._enter_condition(meaning, str(err))
                else:
                    self._rebuild_reason = f"produce failed: {err}"
                return None
            except (TypeError, ValueError) as exc:
                return f"produce refused the record: {exc}"
            if self._sent == self._reported:  # the stall clock starts with the first in flight
                self._last_progress = time.monotonic()
            self._sent += 1
        return int(report)

    def results(self) -> tuple[list[int], list[tuple[int, str, bool]]]:
        """Tokens delivered, and (token, reason, refused on its own) for records refused for
        good, since the last call."""
        delivered = [self._delivered.popleft() for _ in range(len(self._delivered))]
        refused = [self._refused.popleft() for _ in range(len(self._refused))]
        return [int(t) for t in delivered], refused

    def isolate(self, reason: str) -> None:
        """Rebuild isolating (see the module's docstring)."""
        if not self.isolating:
            self._rebuild_reason = f"isolating records: {reason}"
            self._isolate_next = True

    def end_isolation(self) -> None:
        """Swap the normal client back in once nothing is in flight (``accepting`` is False
        until then)."""
        if self.isolating:
            self._end_isolation = True

    # -- the thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        self._warm()
        while not self._closing:
            try:
                self._turn()
            except Exception as exc:  # the producer must outlive any surprise
                self._set_error(f"relay error: {exc}")
                log.exception("Kafka producer error; retrying in 1 s (events stay in the "
                              "journals)")
                self._stop.wait(1.0)
        self._shut_down()

    def _turn(self) -> None:
        if self._end_isolation and self.in_flight == 0:
            self._swap(isolating=False, reason="suspect records settled")
        if self._rebuild_reason:
            self._rebuild()
        self._client.poll(0.05 if (self._end_isolation or self._rebuild_reason) else POLL_WAIT)
        self._settle()
        now = time.monotonic()
        if self.condition:
            if now - self._last_probe > PROBE_EVERY:
                self._last_probe = now
                self._probe_condition()
        elif self.in_flight and now - self._last_progress > self._stall_timeout:
            self._rebuild_reason = (f"no delivery report for {now - self._last_progress:.0f}s "
                                    f"with {self.in_flight} records in flight")
        elif not self.in_flight and self.broker_up is False and now - self._last_probe > (
                PROBE_EVERY):
            self._last_probe = now
            self._warm()

    def _settle(self) -> None:
        """Classify what the last poll reported, and wake the main loop if anything came."""
        if self._delivered:
            self._last_progress = time.monotonic()
            self._backoff = 0.5
            if self.broker_up is not True or self.condition:
                self._recovered()
            if self.problem is not None:
                log.warning("Kafka deliveries succeed again (was: %s)", self.problem)
                self.problem = None
        if self._failed:
            self._classify([self._failed.popleft() for _ in range(len(self._failed))])
        if self._delivered or self._refused:
            self._wake()

    def _classify(self, failed: list[tuple[Report, Any]]) -> None:
        """Failed delivery reports: a refusal of one record (isolated: for good; otherwise a
        suspicion, see the module's docstring); a global condition (the records stay pending,
        resent when it clears); anything else rebuilds the producer. One log line per batch."""
        retry: list[tuple[Report, Any]] = []
        suspects = 0
        for report, err in failed:
            kind, meaning = classify(err)
            if kind is ErrorClass.MESSAGE:
                reason = f"{error_name(err)}: {meaning} ({err})"
                if report.isolating:
                    self._refused.append((int(report), reason, True))
                else:
                    suspects += 1
                    self._refused.append((int(report), reason, False))
            elif kind is ErrorClass.GLOBAL:
                self._enter_condition(meaning, str(err))
            else:
                retry.append((report, err))
        if suspects:
            self.isolate(f"{suspects} refused in a batch")
        if not retry:
            return
        problem = next(filter(None, (degraded(err) for _, err in retry)), None)
        if problem:
            self._set_problem(problem, "Kafka refuses writes to %s: %s. Events are kept in the "
                              "journals and sent once enough replicas are back.", self.topic,
                              problem)
        self.stats.incr("failed", len(retry), transport="kafka")
        err = retry[0][1]
        self._set_error(str(err))
        if self.broker_up is False or self.condition:
            level = logging.DEBUG if self._failures_logged else logging.WARNING
        else:
            level = logging.ERROR
        self._failures_logged = True
        log.log(level, "delivery of %s records failed (%s); they stay in the journals and are "
                "resent", len(retry), err)
        if not self.condition:
            self._rebuild_reason = f"delivery failed: {err}"

    def _rebuild(self) -> None:
        reason, self._rebuild_reason = self._rebuild_reason, None
        isolating = self._isolate_next or (self.isolating and not self._end_isolation)
        self._isolate_next = self._end_isolation = False
        self.rebuilds += 1
        log.log(logging.DEBUG if self.broker_up is False else logging.WARNING,
                "rebuilding the Kafka producer (%s); resending every record not acknowledged",
                reason)
        self.stats.incr("producer_rebuilds", transport="kafka")
        with self._lock:
            self._paused = True
            old = self._client
            self.generation += 1  # old reports are now void; the main loop rewinds
            old.purge(in_queue=True, in_flight=True, blocking=False)
        old.poll(0)
        self._wake()
        pause = self._backoff
        if self._closing:
            pause = 0.0
        self._pause_until_cluster_changes(pause)
        self._backoff = min(max(self._backoff, 0.25) * 2, MAX_BACKOFF)
        self._install(isolating)
        self._destroy_later(old)

    def _swap(self, *, isolating: bool, reason: str) -> None:
        """Replace the client with nothing in flight: no record is purged, none resent."""
        with self._lock:
            self._paused = True
            old = self._client
            self.generation += 1
        log.info("Kafka producer replaced (%s)", reason)
        self._install(isolating)
        self._end_isolation = False
        self._destroy_later(old)
        self._wake()

    def _install(self, isolating: bool) -> None:
        config = {**self._config, **(ISOLATING if isolating else {})}
        client = self._ck.Producer(config)
        with self._lock:
            self._client = client
            self.isolating = isolating
            self._report = _report_type(self, self.generation, isolating)
            self._sent = self._reported = 0
            self._paused = False
        self._last_progress = time.monotonic()
        self._wake()

    @staticmethod
    def _destroy_later(old: Any) -> None:
        """librdkafka's destroy waits for its broker threads, up to a request timeout while the
        brokers are down: on a thread of its own, never this one."""
        doomed = [old]
        del old
        start_thread(doomed.clear, "openalgo-events-kafka-destroy")

    def _pause_until_cluster_changes(self, pause: float) -> None:
        """The rebuild backoff: ``pause`` seconds, cut short as soon as the cluster shows more of
        itself than at the start (a broker back, a leader elected, a replica in sync), asked
        every ``BACKOFF_PROBE_EVERY`` seconds by a client of its own with a short reconnect
        backoff (the old producer's would hide the return as long as the pause itself)."""
        deadline = time.monotonic() + pause
        if pause < 2 * BACKOFF_PROBE_EVERY:
            self._stop.wait(pause)
            return
        conf = {k: v for k, v in self._config.items() if k != "error_cb"}
        try:
            probe = self._ck.Producer({**conf, "reconnect.backoff.ms": 100,
                                       "reconnect.backoff.max.ms": 500})
        except Exception:
            self._stop.wait(pause)
            return
        before = None if self.broker_up is False else self._cluster_view(
            probe, BACKOFF_PROBE_EVERY)
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            now = self._cluster_view(probe, min(BACKOFF_PROBE_EVERY, max(0.01, left)))
            if now is not None and (before is None or any(
                    a > b for a, b in zip(now, before, strict=True))):
                log.debug("the Kafka cluster answers again (%s -> %s); rebuilding now", before,
                          now)
                return
            if now is not None and before is not None:
                before = tuple(min(a, b) for a, b in zip(now, before, strict=True))
            self._stop.wait(min(BACKOFF_PROBE_EVERY, max(0.0, deadline - time.monotonic())))

    def _cluster_view(self, client: Any, timeout: float) -> tuple[int, ...] | None:
        """(brokers, partitions with a leader, in-sync replicas over them), or None."""
        try:
            metadata = client.list_topics(self.topic, timeout=timeout)
        except Exception:
            return None
        topic = metadata.topics.get(self.topic)
        partitions = list(topic.partitions.values()) if topic is not None else []
        return (len(metadata.brokers), sum(p.leader >= 0 for p in partitions),
                sum(len(p.isrs) for p in partitions))

    # -- errors and conditions: logged once per change --------------------------------------
    def _set_error(self, text: str) -> None:
        self.last_error, self.last_error_at = text, time.time()

    def _on_error(self, err: Any) -> None:
        """librdkafka's error callback (inside poll)."""
        kind, meaning = classify(err)
        if kind is ErrorClass.GLOBAL:
            self._enter_condition(meaning, str(err))
        elif err.code() == self._ck.KafkaError._ALL_BROKERS_DOWN:
            self._set_error(str(err))
            self._set_down(str(err))
        elif err.fatal():
            self._set_error(str(err))
            self._rebuild_reason = f"fatal producer error: {err}"
        elif is_connection_noise(err):
            log.debug("Kafka client: %s", err)
        else:
            name = error_name(err)
            first = name not in self._warned
            self._warned.add(name)
            self._set_error(str(err))
            log.log(logging.WARNING if first else logging.DEBUG, "Kafka client error: %s", err)

    def _set_down(self, reason: str) -> None:
        was, self.broker_up = self.broker_up, False
        if was is not False:
            self._down_since = time.monotonic()
            if self.condition != AUTHENTICATION:
                log.warning("Kafka brokers unreachable (%s); events are kept in the journals "
                            "and sent when they are back", reason)

    def _recovered(self) -> None:
        """A delivery or a metadata answer: the brokers are up, and any condition is over."""
        was, self.broker_up = self.broker_up, True
        self._warned.clear()
        self._failures_logged = False
        self.last_error = self.last_error_at = None  # the cause is gone: so is the error
        if was is False:
            log.warning("Kafka brokers reachable again after %ss",
                        round(time.monotonic() - self._down_since))
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
        if self.condition == name:
            return
        self.condition, self.condition_detail = name, f"{detail}; {hint}"
        self._last_probe = time.monotonic()
        self._set_error(f"{name}: {detail}")
        log.error("Kafka %s for topic %s (%s): no event is sent until this is fixed, and every "
                  "event is kept in the journals; %s", name, self.topic, detail, hint)

    def _clear_condition(self) -> None:
        name, self.condition, self.condition_detail = self.condition, None, None
        if name is None:
            return
        log.warning("Kafka %s for topic %s is over; sending the pending events in order", name,
                    self.topic)
        self._rebuild_reason = f"{name} cleared"  # what librdkafka held meanwhile: resent
        self._backoff = 0.0

    def _probe_condition(self) -> None:
        self.condition_probes += 1
        try:
            metadata = self._client.list_topics(self.topic, timeout=2.0)
        except Exception:
            return
        error = metadata.topics[self.topic].error if self.topic in metadata.topics else None
        if error is not None:
            kind, meaning = classify(error)
            if kind is ErrorClass.GLOBAL and meaning != self.condition:
                self._clear_condition()
                self._enter_condition(meaning, str(error))
            return
        self._recovered()

    def _set_problem(self, problem: str, message: str, *args: Any) -> None:
        self._set_error(problem)
        if problem != self.problem:
            self.problem = problem
            log.error(message, *args)

    def _warm(self) -> None:
        """Connect and fetch metadata now; a missing or forbidden topic is a condition from
        the start; the topic's record size limit is checked once."""
        try:
            metadata = self._client.list_topics(self.topic, timeout=2.0)
        except Exception as exc:
            self._set_error(str(exc))
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
            from ..transports.kafka_limits import topic_limit_problem

            conf = {k: v for k, v in self._config.items() if k != "error_cb"}
            problem = topic_limit_problem(conf, self.topic, int(conf.get("message.max.bytes", 0)))
            if problem:
                log.warning("%s", problem)

    def delivery_state(self) -> dict[str, Any]:
        """What the producer knows, cheaply: ``delivering`` is False while the brokers are
        unreachable, a condition holds or a named problem lasts."""
        return {
            "delivering": (self.broker_up is not False and not self.condition
                           and self.problem is None),
            "broker_reachable": self.broker_up,
            "in_flight": self.in_flight,
            "producer_rebuilds": self.rebuilds,
            "last_error": self.last_error,
            "last_error_at": _iso(self.last_error_at),
            "condition": self.condition,
            "condition_detail": self.condition_detail,
            "problem": self.problem,
            "isolating": self.isolating,
        }

    # -- closing --------------------------------------------------------------------------------
    def close(self, timeout: float) -> None:
        """Deliver what is in flight for up to ``timeout`` seconds, at once not at all when the
        brokers are known down or a condition holds (what is not acknowledged stays in the
        journals); then stop the thread."""
        hopeless = self.broker_up is False or bool(self.condition)
        self._close_deadline = time.monotonic() + (0.0 if hopeless else timeout)
        self._closing = True
        self._stop.set()
        self._thread.join(timeout + 5.0)

    def _shut_down(self) -> None:
        left = max(0.0, self._close_deadline - time.monotonic())
        if left and self.in_flight:
            self._client.flush(left)
            self._settle()
        with self._lock:
            self._paused = True
            self.generation += 1
            client = self._client
        client.purge(in_queue=True, in_flight=True, blocking=False)
        self._destroy_later(client)


def _iso(moment: float | None) -> str | None:
    return None if moment is None else utc_timestamp(datetime.fromtimestamp(moment, UTC))
