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

Exactly-once (``transactional_id`` given): records go out in Kafka transactions, and the relay
commits (``commit``, on its main thread) each transaction together with a record per journal on
the positions topic saying how far that journal is done once the transaction is: a crash
between the commit and the relay's own ledger resends nothing, since the next relay takes the
position from Kafka when it is ahead (``remote_positions``). A record is reported delivered only
when its transaction commits. A failed record (any error) dooms its transaction, which is
aborted and resent; a producer fenced by a newer relay of the same spool stops (``fenced``),
never fights back. A cluster that refuses transactions (an old broker, an ACL without the
transactional id) makes the producer fall back to at-least-once, said once at ERROR and shown
in ``guarantee``. Isolating under exactly-once sends one record per transaction.
"""

from __future__ import annotations

import contextlib
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
    DEGRADED,
    TOPIC_MISSING,
    ErrorClass,
    QuietLibrdkafkaLog,
    classify,
    degraded,
    is_connection_noise,
)
from .positions import Positions

log = logging.getLogger("openalgo_events.kafka")

POLL_WAIT = 0.5  # seconds the thread blocks in poll when nothing arrives
PROBE_EVERY = 5.0  # seconds between metadata probes while the brokers look down or a condition
BACKOFF_PROBE_EVERY = 0.5  # seconds between metadata probes during a rebuild backoff
MAX_BACKOFF = 30.0
# What makes each record its own batch: a refusal then names only the record that caused it.
ISOLATING = {"batch.num.messages": 1, "linger.ms": 0,
             "max.in.flight.requests.per.connection": 1}
CLOSE_GRACE = 2.0  # seconds a close waits for the thread beyond its delivery timeout
INIT_TIMEOUT = 10.0  # seconds init_transactions may take (it needs the transaction coordinator)
COMMIT_STEP = 1.0  # seconds per commit_transaction try (a stop request is seen between tries)
# Errors that say the cluster, or its ACLs, will not give this producer transactions.
NO_TRANSACTIONS = frozenset({"TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
                             "CLUSTER_AUTHORIZATION_FAILED", "UNSUPPORTED_VERSION",
                             "_UNSUPPORTED_FEATURE", "UNSUPPORTED_FOR_MESSAGE_FORMAT",
                             "INVALID_TRANSACTION_TIMEOUT"})
FENCED = frozenset({"_FENCED", "PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH",
                    "TRANSACTIONAL_ID_NOT_FOUND"})


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
        if err is not None:
            producer._failed.append((self, err))
        elif not producer.transactional:  # else delivered when its transaction commits
            producer._delivered.append(self)
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
                 wake: Callable[[], None], stall_timeout: float = 10.0,
                 transactional_id: str | None = None, positions: Positions | None = None,
                 ) -> None:
        self._ck: Any = cast(Any, require("confluent_kafka", "kafka"))
        self.topic = topic
        self.stats = stats
        self._wake = wake
        self._stall_timeout = stall_timeout
        self._config = {"acks": "all", "enable.idempotence": True, **config,
                        "error_cb": self._on_error, "logger": QuietLibrdkafkaLog()}
        self.transactional = transactional_id is not None and positions is not None
        self.guarantee = "exactly-once" if self.transactional else "at-least-once"
        self.fallback_reason: str | None = None
        self.fenced = False
        self._positions = positions
        if self.transactional:
            self._config["transactional.id"] = transactional_id
        # the open transaction (exactly-once): its records' reports, whether one failed
        self._txn_open = False
        self._txn_tokens: list[Report] = []
        self._txn_failed = False
        self._committing = False
        self.remote_positions: dict[str, list[int]] | None = None
        self._lock = new_lock()  # guards the client swap and ``_paused``
        self._stop = new_event()
        self._closing = False
        self._close_deadline = 0.0
        self._paused = self.transactional  # until init_transactions, on the thread
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
        self._min_insync: int | None = None  # the topic's min.insync.replicas (exactly-once)
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
        """Whether ``send`` may be called now (not rebuilding, no condition, no swap due, and
        under exactly-once, the positions in Kafka taken and not committing)."""
        return not (self._paused or self.condition or self._end_isolation or self._closing
                    or self.fenced or self._committing
                    or (self.transactional and self.remote_positions is None))

    @property
    def wants_commit(self) -> bool:
        """Exactly-once: the open transaction should end now (a record of it failed, or it
        holds the one record an isolating transaction may)."""
        return self._txn_open and (self._txn_failed or (self.isolating and bool(
            self._txn_tokens)))

    @property
    def in_flight(self) -> int:
        if self.transactional:
            return len(self._txn_tokens)
        return self._sent - self._reported

    def send(self, key: bytes, value: bytes, headers: list[tuple[str, bytes]],
             timestamp_ms: int) -> int | str | None:
        """Hand one record to librdkafka: its token (an int), None when it must wait (queue
        full, rebuilding), or a reason (a str) when librdkafka refuses this record for good at
        produce (it is then not in flight)."""
        with self._lock:
            if self._paused or self._committing:
                return None
            if self.transactional:
                if self.isolating and self._txn_tokens:
                    return None  # isolating: one record per transaction
                if not self._txn_open:
                    try:
                        self._client.begin_transaction()
                    except self._ck.KafkaException as exc:
                        self._rebuild_reason = f"begin_transaction failed: {exc}"
                        return None
                    self._txn_open = True
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
            if self.transactional:
                self._txn_tokens.append(report)
        return int(report)

    def commit(self, positions: Mapping[str, list[int] | None],
               timeout: float | None = None) -> bool:
        """Exactly-once, on the relay's main thread: commit the open transaction with a record
        per journal of ``positions`` (how far each is done once it commits; None deletes a
        journal's record). On success its records are reported delivered (``results``) and True
        is returned; a transaction that failed is aborted (``generation`` moves on: the relay
        rewinds and resends) and False returned. Blocks while the commit goes on, at most the
        stall timeout."""
        assert self._positions is not None
        with self._lock:
            if self._paused:  # being rebuilt: the open transaction goes with the old client
                return False
            if not self._txn_open:
                if not positions:
                    return True
                try:  # positions alone (a journal retired): a transaction of their own
                    self._client.begin_transaction()
                except self._ck.KafkaException as exc:
                    self._rebuild_reason = f"begin_transaction failed: {exc}"
                    return False
                self._txn_open = True
            self._committing = True
        try:
            if not self._txn_failed:
                for name, position in positions.items():
                    self._client.produce(self._positions.topic, self._positions.value(position),
                                         self._positions.key(name))
                if self._commit_until(time.monotonic() + (
                        self._stall_timeout if timeout is None else timeout)):
                    tokens, self._txn_tokens = self._txn_tokens, []
                    self._delivered.extend(tokens)
                    self._txn_open = False
                    self._progressed()
                    return True
            self._abort()
            return False
        finally:
            self._committing = False
            self._wake()

    def _commit_until(self, deadline: float) -> bool:
        while True:
            try:
                self._client.commit_transaction(COMMIT_STEP)
                return True
            except self._ck.KafkaException as exc:
                err = exc.args[0] if exc.args else exc
                if self._fenced_by(err):
                    return False
                if getattr(err, "retriable", lambda: False)() and not self._closing and (
                        time.monotonic() < deadline):
                    continue
                self._set_error(f"commit failed: {err}")
                if not getattr(err, "txn_requires_abort", lambda: False)():
                    self._rebuild_reason = f"commit failed: {err}"
                return False

    def _abort(self) -> None:
        """Abort the open transaction; its records are void (resent from the journals)."""
        with self._lock:
            self.generation += 1  # reports still to come for them are void; the relay rewinds
            self._report = _report_type(self, self.generation, self.isolating)
            tokens, self._txn_tokens = self._txn_tokens, []
            self._sent = self._reported = 0
            self._txn_failed = False
            self._txn_open = False
        if not tokens or self.fenced or self._rebuild_reason:
            return  # a rebuild drops the transaction with the old client
        try:
            self._client.abort_transaction(self._stall_timeout)
        except self._ck.KafkaException as exc:
            err = exc.args[0] if exc.args else exc
            if not self._fenced_by(err):
                self._rebuild_reason = f"abort failed: {err}"

    def _fenced_by(self, err: Any) -> bool:
        """A newer relay of this spool took the transactional id: stop, never fight back."""
        if error_name(err) not in FENCED:
            return False
        if not self.fenced:
            self.fenced = True
            self._set_error(f"fenced: {err}")
            log.error("relay: another relay of this spool took over its Kafka transactions (%s); "
                      "this one stops and sends nothing more", err)
        return True

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
        if self.transactional:
            self._start_transactions()
        if not self._closing:
            self._warm()
        while not self._closing:
            try:
                self._turn()
            except self._ck.KafkaException as exc:
                # The client raised (a fatal error of its transactions surfaces from poll):
                # it is unusable, so it is replaced, unless a newer relay fenced it.
                err = exc.args[0] if exc.args else exc
                if not self._fenced_by(err) and not self._rebuild_reason:
                    self._set_error(str(err))
                    self._rebuild_reason = f"producer error: {err}"
                self._stop.wait(0.1)  # never a hot loop, whatever raised
            except Exception as exc:  # the producer must outlive any surprise
                self._set_error(f"relay error: {exc}")
                log.exception("Kafka producer error; retrying in 1 s (events stay in the "
                              "journals)")
                self._stop.wait(1.0)
        self._shut_down()

    def _start_transactions(self) -> None:
        """Exactly-once, before anything is sent: the positions topic there, the transactional
        id initialised (fencing any older relay of this spool), the committed positions read.
        Retried while the cluster does not answer; a cluster that refuses transactions makes
        the producer fall back to at-least-once."""
        from .positions import ensure_topic

        assert self._positions is not None
        conf = {k: v for k, v in self._config.items() if k != "logger"}
        backoff, initialised = 0.5, False
        while not self._closing:
            there, refused = ensure_topic(conf, self._positions.topic)
            # the client's own errors (a wrong SASL password, a missing ACL) are served by its
            # poll, which nothing else calls before the transactions start
            self._client.poll(0)
            if refused:
                self._fall_back(refused)
                return
            if not there:
                self._set_down("no broker answered")
            else:
                try:
                    if not initialised:
                        self._client.init_transactions(INIT_TIMEOUT)
                        initialised = True
                except self._ck.KafkaException as exc:
                    err = exc.args[0] if exc.args else exc
                    if error_name(err) in NO_TRANSACTIONS:
                        self._fall_back(f"the cluster refuses transactions to this producer "
                                        f"({err})")
                        return
                    self._set_error(f"init_transactions: {err}")
                    self._set_down(str(err))
                else:
                    remote = self._positions.read(conf, INIT_TIMEOUT)
                    if remote is not None:
                        self.remote_positions = dict(remote)
                        with self._lock:
                            self._paused = False
                        if self.broker_up is not True:
                            self._recovered()
                        self._wake()
                        return
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)

    def _fall_back(self, reason: str) -> None:
        """At-least-once from now on (until the relay restarts), said once at ERROR."""
        self.transactional = False
        self.guarantee = "at-least-once"
        self.fallback_reason = reason
        self._config.pop("transactional.id", None)
        log.error("relay: exactly-once is not available: %s. Events are delivered at-least-once "
                  "until the relay restarts (a duplicate keeps its event_id)", reason)
        old = self._client
        self._install(isolating=False)
        self._destroy_later(old)

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
        elif (not self.transactional and self.in_flight
              and now - self._last_progress > self._stall_timeout):
            self._rebuild_reason = (f"no delivery report for {now - self._last_progress:.0f}s "
                                    f"with {self.in_flight} records in flight")
        elif not self.in_flight and self.broker_up is False and now - self._last_probe > (
                PROBE_EVERY):
            self._last_probe = now
            self._warm()

    def _settle(self) -> None:
        """Classify what the last poll reported, and wake the main loop if anything came."""
        if self._delivered:
            self._progressed()
        if self._failed:
            self._classify([self._failed.popleft() for _ in range(len(self._failed))])
        if self._delivered or self._refused:
            self._wake()

    def _progressed(self) -> None:
        """Records acknowledged (at-least-once) or a transaction committed (exactly-once): the
        brokers are up, and any condition or problem is over."""
        self._last_progress = time.monotonic()
        self._backoff = 0.5
        if self.broker_up is not True or self.condition:
            self._recovered()
        if self.problem is not None:
            log.warning("Kafka deliveries succeed again (was: %s)", self.problem)
            self.problem = None

    def _classify(self, failed: list[tuple[Report, Any]]) -> None:
        """Failed delivery reports: a refusal of one record (isolated: for good; otherwise a
        suspicion, see the module's docstring); a global condition (the records stay pending,
        resent when it clears); anything else rebuilds the producer. One log line per batch."""
        retry: list[tuple[Report, Any]] = []
        suspects = 0
        if self.transactional:
            self._txn_failed = True  # any failed record dooms its transaction: aborted, resent
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
        if not self.condition and not self.transactional:
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
        if self.transactional:
            self._diagnose_replicas()
        old = self._take_client()  # old reports are now void; the main loop rewinds
        with contextlib.suppress(self._ck.KafkaException):  # its errors no longer matter
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

    def _diagnose_replicas(self) -> None:
        """Exactly-once, a transaction stuck (a commit or init_transactions failed): the
        brokers' refusal stays inside the transaction and never reaches a record's report, so
        health names the usual cause from the metadata: partitions of the topic with fewer
        in-sync replicas than its ``min.insync.replicas``."""
        if self._min_insync is None:
            return
        try:
            topic = self._client.list_topics(self.topic, timeout=2.0).topics.get(self.topic)
        except Exception:
            return  # no answer: the brokers are down, which health already says
        if topic is None or topic.error is not None:
            return
        short = sorted(p.id for p in topic.partitions.values()
                       if len(p.isrs) < self._min_insync)
        if short:
            self._set_problem(f"{DEGRADED['NOT_ENOUGH_REPLICAS']}; partitions {short} have "
                              f"fewer than {self._min_insync} in sync",
                              "Kafka cannot complete the relay's transactions on %s: %s. Events "
                              "are kept in the journals and sent once enough replicas are "
                              "back.", self.topic, "NOT_ENOUGH_REPLICAS")

    def _take_client(self) -> Any:
        """Pause sending and take the client out of use (its reports void from now on), once
        no commit is going on: the next client's init_transactions fences this one, and a
        commit it cut short would read as a newer relay having taken over. A commit lasts at
        most the stall timeout; none starts once paused."""
        while True:
            with self._lock:
                if not self._committing:
                    self._paused = True
                    self.generation += 1
                    return self._client
            time.sleep(0.005)

    def _swap(self, *, isolating: bool, reason: str) -> None:
        """Replace the client with nothing in flight: no record is purged, none resent."""
        old = self._take_client()
        log.info("Kafka producer replaced (%s)", reason)
        self._install(isolating)
        self._end_isolation = False
        self._destroy_later(old)
        self._wake()

    def _install(self, isolating: bool) -> None:
        config = {**self._config, **(ISOLATING if isolating else {})}
        client = self._ck.Producer(config)
        if self.transactional:
            try:  # fences the old client's epoch and ends its transaction, one way or the other
                client.init_transactions(INIT_TIMEOUT)
            except self._ck.KafkaException as exc:
                err = exc.args[0] if exc.args else exc
                self._destroy_later(client)
                if error_name(err) in NO_TRANSACTIONS:
                    self._fall_back(f"the cluster refuses transactions to this producer ({err})")
                    return
                self._set_error(f"init_transactions: {err}")
                self._rebuild_reason = f"init_transactions failed: {err}"  # stays paused
                return
            # A commit that timed out may still have completed (init_transactions rolls a
            # prepared commit forward): what Kafka now holds decides what is resent, read
            # before anything is sent on the new client, as at start.
            assert self._positions is not None
            conf = {k: v for k, v in self._config.items() if k != "logger"}
            remote = self._positions.read(conf, INIT_TIMEOUT)
            if remote is None:
                self._destroy_later(client)
                self._rebuild_reason = "the committed positions could not be read"  # paused
                return
            self.remote_positions = dict(remote)
        with self._lock:
            self._client = client
            self.isolating = isolating
            self._report = _report_type(self, self.generation, isolating)
            self._sent = self._reported = 0
            self._txn_open = self._txn_failed = False
            self._txn_tokens = []
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
            from ..transports.kafka_limits import topic_config, topic_limit_problem

            conf = {k: v for k, v in self._config.items() if k != "error_cb"}
            problem = topic_limit_problem(conf, self.topic, int(conf.get("message.max.bytes", 0)))
            if problem:
                log.warning("%s", problem)
            if self.transactional:
                self._min_insync = topic_config(conf, self.topic, "min.insync.replicas")

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
            "guarantee": self.guarantee,
            "guarantee_fallback": self.fallback_reason,
        }

    # -- closing --------------------------------------------------------------------------------
    def close(self, timeout: float) -> None:
        """Deliver what is in flight for up to ``timeout`` seconds, at once not at all when the
        brokers are known down or a condition holds (what is not acknowledged stays in the
        journals); then stop the thread. Under exactly-once the relay commits (or not) first:
        an open transaction left here is aborted."""
        hopeless = self.broker_up is False or bool(self.condition) or self.transactional
        self._close_deadline = time.monotonic() + (0.0 if hopeless else timeout)
        self._closing = True
        self._stop.set()
        # The thread may be inside a call that waits on the brokers (a metadata request, an
        # init_transactions: up to INIT_TIMEOUT): a stop does not wait that out when nothing
        # can be delivered anyway; the thread ends by itself, and nothing is lost with it.
        self._thread.join((0.0 if hopeless else timeout) + CLOSE_GRACE)

    def _shut_down(self) -> None:
        left = max(0.0, self._close_deadline - time.monotonic())
        if left and self.in_flight:
            self._client.flush(left)
            self._settle()
        with self._lock:
            self._paused = True
            self.generation += 1
            client = self._client
            open_txn = self._txn_open
        if open_txn and not self.fenced:
            with contextlib.suppress(Exception):
                client.abort_transaction(1.0)
        client.purge(in_queue=True, in_flight=True, blocking=False)
        self._destroy_later(client)


def _iso(moment: float | None) -> str | None:
    return None if moment is None else utc_timestamp(datetime.fromtimestamp(moment, UTC))
