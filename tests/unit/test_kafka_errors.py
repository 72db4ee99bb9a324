"""The one table of librdkafka errors, and the error-callback log that reports state changes
once (issue 15 case 1, issue 16 log floods)."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError

from openalgo_events.transports.kafka_errors import (
    AUTHENTICATION,
    AUTHORIZATION,
    TOPIC_MISSING,
    ClientErrorLog,
    ErrorClass,
    classify,
)


@pytest.mark.parametrize("code,expected", [
    (KafkaError.MSG_SIZE_TOO_LARGE, (ErrorClass.MESSAGE, None)),
    (KafkaError.INVALID_RECORD, (ErrorClass.MESSAGE, None)),
    (KafkaError.INVALID_MSG, (ErrorClass.MESSAGE, None)),
    (KafkaError.SASL_AUTHENTICATION_FAILED, (ErrorClass.GLOBAL, AUTHENTICATION)),
    (KafkaError._AUTHENTICATION, (ErrorClass.GLOBAL, AUTHENTICATION)),
    (KafkaError.TOPIC_AUTHORIZATION_FAILED, (ErrorClass.GLOBAL, AUTHORIZATION)),
    (KafkaError.UNKNOWN_TOPIC_OR_PART, (ErrorClass.GLOBAL, TOPIC_MISSING)),
    (KafkaError._UNKNOWN_TOPIC, (ErrorClass.GLOBAL, TOPIC_MISSING)),
    (KafkaError._MSG_TIMED_OUT, (ErrorClass.TRANSIENT, "")),
    (KafkaError._TRANSPORT, (ErrorClass.TRANSIENT, "")),
    (KafkaError.NOT_LEADER_FOR_PARTITION, (ErrorClass.TRANSIENT, "")),
    (KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, (ErrorClass.TRANSIENT, "")),
])
def test_each_code_has_its_class(code, expected):
    """Per-record refusals, global conditions and everything else (transient, the default)."""
    kind, meaning = classify(KafkaError(code))
    assert kind is expected[0]
    if expected[1] is not None:
        assert meaning == expected[1]


def test_error_callback_log_reports_each_state_change_once(caplog):
    """100 connection failures and 10 'all brokers down' are one WARNING; an authentication
    failure is one ERROR and never 'unreachable'; recovery is one line."""
    caplog.set_level(logging.DEBUG, logger="test.errors")
    errors = ClientErrorLog(logging.getLogger("test.errors"), "bridge consumer")
    for _ in range(100):
        errors.error(KafkaError(KafkaError._TRANSPORT, "Connect failed: Connection refused"))
    for _ in range(10):
        errors.error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    errors.ok()
    for _ in range(10):
        errors.error(KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error"))
        errors.error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    errors.ok()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert [level for level, _ in lines] == ["WARNING", "WARNING", "ERROR", "WARNING"], lines
    assert "brokers unreachable" in lines[0][1] and "authentication failed" in lines[2][1]
    assert not any("unreachable" in text for _, text in lines[2:]), lines
