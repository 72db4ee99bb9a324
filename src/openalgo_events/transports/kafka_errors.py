"""Every librdkafka error the producer can meet, classified once, in one table.

- ``TRANSIENT``: the network, a broker restart, a leader change, a timeout. The relay keeps the
  event pending and recovers as it always has (rebuild the producer, resend in order).
- ``MESSAGE``: permanent for this one record (too large, invalid). Resending cannot help, so the
  event is set aside in the spool as rejected with its reason (``openalgo-events spool
  rejected`` lists it, ``spool retry EVENT_ID`` sends it again once the cause is fixed), and
  every other event keeps flowing.
- ``GLOBAL``: permanent for every record until an operator acts (authentication,
  authorization, the topic missing). Everything stays pending, nothing is rebuilt in a loop;
  health names the condition and it is logged at ERROR once when it starts.

Codes are listed by their ``confluent_kafka.KafkaError`` names (resolved when first used, so this
module imports without confluent-kafka); a code not listed is transient, the safe default (an
event is never set aside on a guess).
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any


class ErrorClass(StrEnum):
    TRANSIENT = "transient"
    MESSAGE = "message"
    GLOBAL = "global"


# A global condition's name, as health and the log show it.
AUTHENTICATION = "authentication failed"
AUTHORIZATION = "authorization failed"
TOPIC_MISSING = "topic missing"
MISCONFIGURED = "producer misconfigured"

# KafkaError name -> (class, condition name for GLOBAL, or what it means for MESSAGE)
TABLE: dict[str, tuple[ErrorClass, str]] = {
    # Permanent for one record.
    "MSG_SIZE_TOO_LARGE": (ErrorClass.MESSAGE, "larger than message.max.bytes or the topic's "
                                               "max.message.bytes"),
    "INVALID_MSG_SIZE": (ErrorClass.MESSAGE, "invalid message size"),
    "INVALID_MSG": (ErrorClass.MESSAGE, "the broker found the record corrupt"),
    "INVALID_RECORD": (ErrorClass.MESSAGE, "the broker refused the record as invalid"),
    "RECORD_LIST_TOO_LARGE": (ErrorClass.MESSAGE, "the record batch is too large"),
    "INVALID_TIMESTAMP": (ErrorClass.MESSAGE, "the record's timestamp is out of the topic's "
                                              "accepted range"),
    "POLICY_VIOLATION": (ErrorClass.MESSAGE, "a broker policy refused the record"),
    "_BAD_MSG": (ErrorClass.MESSAGE, "librdkafka found the record malformed"),
    "_INVALID_ARG": (ErrorClass.MESSAGE, "librdkafka refused the record's arguments"),
    # Permanent for every record, until an operator acts.
    "_AUTHENTICATION": (ErrorClass.GLOBAL, AUTHENTICATION),
    "SASL_AUTHENTICATION_FAILED": (ErrorClass.GLOBAL, AUTHENTICATION),
    "UNSUPPORTED_SASL_MECHANISM": (ErrorClass.GLOBAL, AUTHENTICATION),
    "ILLEGAL_SASL_STATE": (ErrorClass.GLOBAL, AUTHENTICATION),
    "TOPIC_AUTHORIZATION_FAILED": (ErrorClass.GLOBAL, AUTHORIZATION),
    "CLUSTER_AUTHORIZATION_FAILED": (ErrorClass.GLOBAL, AUTHORIZATION),
    "TRANSACTIONAL_ID_AUTHORIZATION_FAILED": (ErrorClass.GLOBAL, AUTHORIZATION),
    "UNKNOWN_TOPIC_OR_PART": (ErrorClass.GLOBAL, TOPIC_MISSING),
    "_UNKNOWN_TOPIC": (ErrorClass.GLOBAL, TOPIC_MISSING),
    "_UNKNOWN_PARTITION": (ErrorClass.GLOBAL, TOPIC_MISSING),
    "TOPIC_EXCEPTION": (ErrorClass.GLOBAL, TOPIC_MISSING),
    "INVALID_REQUIRED_ACKS": (ErrorClass.GLOBAL, MISCONFIGURED),
    "UNSUPPORTED_COMPRESSION_TYPE": (ErrorClass.GLOBAL, MISCONFIGURED),
}
# Transient errors that still say something an operator must know: the events are retried as
# usual, and health names the reason (``problem``) until a delivery succeeds again.
DEGRADED: dict[str, str] = {
    "NOT_ENOUGH_REPLICAS": "NOT_ENOUGH_REPLICAS: fewer in-sync replicas than the topic's "
                           "min.insync.replicas (brokers down?)",
    "NOT_ENOUGH_REPLICAS_AFTER_APPEND": "NOT_ENOUGH_REPLICAS: fewer in-sync replicas than the "
                                        "topic's min.insync.replicas (brokers down?)",
}
# librdkafka's reports of one connection attempt failing: during an outage there is one per
# broker per retry, so they are logged at debug; the outage itself is reported once.
CONNECTION_NOISE = frozenset({"_TRANSPORT", "_RESOLVE", "_TIMED_OUT", "_MSG_TIMED_OUT",
                              "_ALL_BROKERS_DOWN", "_DESTROY", "NETWORK_EXCEPTION"})

_by_code: dict[int, tuple[ErrorClass, str, str]] | None = None


def _codes() -> dict[int, tuple[ErrorClass, str, str]]:
    global _by_code
    if _by_code is None:
        from confluent_kafka import KafkaError

        table: dict[int, tuple[ErrorClass, str, str]] = {}
        for name, (kind, meaning) in TABLE.items():
            code = getattr(KafkaError, name, None)
            if isinstance(code, int):
                table[code] = (kind, meaning, name)
        _by_code = table
    return _by_code


def classify(err: Any) -> tuple[ErrorClass, str]:
    """The class of a ``confluent_kafka.KafkaError`` (or anything with ``code()``) and, for
    MESSAGE its meaning, for GLOBAL the condition's name; ``(TRANSIENT, "")`` when not listed.

    >>> from confluent_kafka import KafkaError
    >>> classify(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))[0]
    <ErrorClass.MESSAGE: 'message'>
    """
    try:
        code = err.code()
    except AttributeError:
        return ErrorClass.TRANSIENT, ""
    kind, meaning, _ = _codes().get(code, (ErrorClass.TRANSIENT, "", ""))
    return kind, meaning


def degraded(err: Any) -> str | None:
    """What a transient error tells an operator (``DEGRADED``), or None."""
    try:
        return DEGRADED.get(str(err.name()))
    except AttributeError:
        return None


def is_connection_noise(err: Any) -> bool:
    """True for librdkafka's per-attempt connection failures (logged at debug)."""
    try:
        return str(err.name()) in CONNECTION_NOISE
    except AttributeError:
        return False


class QuietLibrdkafkaLog:
    """librdkafka's own log (``logger`` property), at debug: it repeats every reconnect attempt
    during an outage, which the error callbacks report once, as a state change."""

    _log = logging.getLogger("openalgo_events.librdkafka")

    def log(self, level: int, msg: str, *args: Any) -> None:
        self._log.debug(msg, *args)


class ClientErrorLog:
    """An error callback's log: one line per state change (brokers unreachable at WARNING, a
    global condition such as "authentication failed" at ERROR, and one line when it is over),
    per-connection chatter at debug, any other error once until the client recovers.

    >>> errors = ClientErrorLog(logging.getLogger("x"), "inbound consumer")  # doctest: +SKIP
    >>> consumer_config["error_cb"] = errors.error  # doctest: +SKIP
    """

    def __init__(self, logger: logging.Logger, client: str) -> None:
        self._log = logger
        self._client = client
        self.state: str | None = None  # "brokers unreachable", a condition, or None
        self._seen: set[str] = set()

    def error(self, err: Any) -> None:
        """Log ``err`` (a ``KafkaError``) if it changes the client's state."""
        kind, meaning = classify(err)
        name = _name(err)
        if kind is ErrorClass.GLOBAL:
            state, level = meaning, logging.ERROR
        elif name == "_ALL_BROKERS_DOWN":
            if self.state is not None:  # an authentication failure also takes brokers "down"
                return
            state, level = "brokers unreachable", logging.WARNING
        elif name in CONNECTION_NOISE:
            self._log.debug("%s: Kafka client: %s", self._client, err)
            return
        else:
            first = name not in self._seen
            self._seen.add(name)
            self._log.log(logging.WARNING if first else logging.DEBUG, "%s: Kafka client error: "
                          "%s", self._client, err)
            return
        if state != self.state:
            self.state = state
            self._log.log(level, "%s: Kafka %s (%s)", self._client, state, err)

    def ok(self) -> None:
        """The client heard from the brokers: log once if that ends a state."""
        self._seen.clear()
        if self.state is not None:
            was, self.state = self.state, None
            self._log.warning("%s: Kafka %s is over", self._client, was)


def _name(err: Any) -> str:
    try:
        return str(err.name())
    except AttributeError:
        return type(err).__name__
