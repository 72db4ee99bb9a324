"""Configuration: defaults, every validation error, masking, pass-through, .env."""

from __future__ import annotations

import pytest

from openalgo_events import ConfigError, Mode, Settings, validate_all_configs
from openalgo_events.config import MASK, VARIABLES, sample_env, validate_order_event_config

KAFKA = {"ORDER_EVENT_MODE": "KAFKA", "KAFKA_BOOTSTRAP_SERVERS": "kafka1:9092,kafka2:9092"}


def problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    return info.value.problems


def test_no_variables_means_socketio_and_the_designs_defaults():
    """With nothing set the app starts exactly as before: SOCKETIO, design defaults."""
    s = Settings.from_env({})
    assert s.mode is Mode.SOCKETIO
    assert (s.order_events_topic, s.esb_events_topic) == ("from_openalgo_order_events",
                                                          "from_esb_order_events")
    assert (s.compression, s.batch_size, s.linger_ms) == ("snappy", 16384, 10)
    assert (s.consumer_group, s.auto_offset_reset) == ("openalgo-order-consumer", "latest")
    assert validate_all_configs({}) == {"order_event_mode": "SOCKETIO"}


def test_mode_is_case_insensitive():
    """ORDER_EVENT_MODE=kafka works like KAFKA."""
    assert validate_order_event_config({**KAFKA, "ORDER_EVENT_MODE": "kafka"}) == "KAFKA"


def test_every_problem_is_reported_at_once_with_its_fix():
    """One error lists every problem, each naming the variable, the bad value and the fix."""
    found = problems({
        "ORDER_EVENT_MODE": "KAFKA",
        "KAFKA_PRODUCER_BATCH_SIZE": "big",
        "KAFKA_PRODUCER_COMPRESSION": "brotli",
        "KAFKA_CONSUMER_AUTO_OFFSET_RESET": "newest",
    })
    text = "\n".join(found)
    assert len(found) == 4
    assert "KAFKA_BOOTSTRAP_SERVERS" in text and "host:port" in text
    assert "KAFKA_PRODUCER_BATCH_SIZE='big' is not a whole number" in text
    assert "KAFKA_PRODUCER_COMPRESSION='brotli'" in text and "snappy" in text
    assert "KAFKA_CONSUMER_AUTO_OFFSET_RESET='newest'" in text and "earliest, latest" in text


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"ORDER_EVENT_MODE": "RABBIT"}, "ORDER_EVENT_MODE='RABBIT' is not valid"),
        ({**KAFKA, "KAFKA_BOOTSTRAP_SERVERS": "kafka1"}, "malformed at 'kafka1'"),
        ({**KAFKA, "KAFKA_BOOTSTRAP_SERVERS": "k:99999"}, "port of 'k:99999' is out of range"),
        ({"KAFKA_PRODUCER_LINGER_MS": "-1"}, "below 0"),
        ({"KAFKA_ROLLOUT_PERCENT": "150"}, "above 100"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "requires KAFKA_SASL_MECHANISM"),
        ({"KAFKA_SASL_MECHANISM": "PLAIN"}, "requires KAFKA_SASL_USERNAME"),
        ({"KAFKA_SASL_MECHANISM": "MAGIC"}, "KAFKA_SASL_MECHANISM='MAGIC' is not valid"),
        ({"KAFKA_ORDER_EVENTS_TOPIC": "bad topic"}, "not a valid Kafka topic name"),
        ({"KAFKA_CONSUMER_ENABLED": "perhaps"}, "not a boolean"),
        ({"ORDER_EVENT_SOCKETIO_RECOVERY": "sometimes"},
         "ORDER_EVENT_SOCKETIO_RECOVERY='sometimes' is not a boolean"),
        ({"ORDER_EVENT_SOCKETIO_RECOVERY_MAX_EVENTS": "0"}, "below 1"),
        ({"ORDER_EVENT_SOCKETIO_RECOVERY_SECONDS": "2m"}, "is not a whole number"),
    ],
)
def test_each_invalid_value_is_named(env, fragment):
    """Each kind of bad value stops start-up with a message naming it."""
    assert any(fragment in p for p in problems(env))


def test_socketio_recovery_is_off_by_default_and_read_when_on():
    """Recovery is off unless ORDER_EVENT_SOCKETIO_RECOVERY says TRUE; its window defaults to
    120 s and 5,000 events, and both bounds are read as set."""
    from openalgo_events.recovery import RecoveryOptions

    assert RecoveryOptions.from_settings(Settings.from_env({})) is None
    on = Settings.from_env({"ORDER_EVENT_SOCKETIO_RECOVERY": "true"})
    assert RecoveryOptions.from_settings(on) == RecoveryOptions(max_events=5000, seconds=120)
    sized = Settings.from_env({"ORDER_EVENT_SOCKETIO_RECOVERY": "TRUE",
                               "ORDER_EVENT_SOCKETIO_RECOVERY_SECONDS": "30",
                               "ORDER_EVENT_SOCKETIO_RECOVERY_MAX_EVENTS": "200"})
    assert RecoveryOptions.from_settings(sized) == RecoveryOptions(max_events=200, seconds=30)
    assert sized.to_env()["ORDER_EVENT_SOCKETIO_RECOVERY"] == "TRUE"


def test_secrets_are_masked_everywhere_config_is_shown():
    """The SASL password and admin token never appear in describe(), repr() or an error."""
    env = {**KAFKA, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "scram-sha-512",
           "KAFKA_SASL_USERNAME": "svc", "KAFKA_SASL_PASSWORD": "s3cr3t-pw",
           "ORDER_EVENT_ADMIN_TOKEN": "tok-123", "KAFKA_LIBRDKAFKA_SSL_KEY_PASSWORD": "kp-456"}
    s = Settings.from_env(env)
    shown = f"{s.describe()} {s!r}"
    for secret in ("s3cr3t-pw", "tok-123", "kp-456"):
        assert secret not in shown
    assert s.describe()["KAFKA_SASL_PASSWORD"] == MASK
    assert s.client_config()["sasl.password"] == "s3cr3t-pw"
    assert s.sasl_mechanism == "SCRAM-SHA-512"
    bad = problems({**env, "KAFKA_PRODUCER_BATCH_SIZE": "x", "ORDER_EVENT_ADMIN_TOKEN": "tok-123"})
    assert "tok-123" not in "\n".join(bad) and "s3cr3t-pw" not in "\n".join(bad)


def test_librdkafka_pass_through_and_unknown_variable_warning():
    """KAFKA_LIBRDKAFKA_* reaches librdkafka; a misspelled variable is reported with a hint."""
    s = Settings.from_env({**KAFKA, "KAFKA_LIBRDKAFKA_SOCKET_KEEPALIVE_ENABLE": "true",
                           "KAFKA_BOOTSTRAP_SERVER": "x:1"})
    assert s.producer_config()["socket.keepalive.enable"] == "true"
    assert s.producer_config()["acks"] == "all" and s.producer_config()["enable.idempotence"]
    assert any("did you mean KAFKA_BOOTSTRAP_SERVERS" in w for w in s.warnings)


def test_settings_are_immutable():
    """Settings cannot be changed after validation."""
    s = Settings.from_env({})
    with pytest.raises(AttributeError):
        s.mode = Mode.KAFKA  # type: ignore[misc]


def test_dotenv_is_read_without_overriding_the_environment(tmp_path, monkeypatch):
    """A .env file is read like OpenAlgo reads it; a variable already set wins."""
    env_file = tmp_path / ".env"
    env_file.write_text("ORDER_EVENT_MODE = 'KAFKA'\nKAFKA_BOOTSTRAP_SERVERS = 'h:9092'\n"
                        "KAFKA_PRODUCER_LINGER_MS = '50'\n")
    monkeypatch.setenv("ORDER_EVENT_MODE", "recorded so that teardown removes what .env sets")
    monkeypatch.delenv("ORDER_EVENT_MODE")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "set:1")
    monkeypatch.setenv("KAFKA_PRODUCER_LINGER_MS", "5")
    s = Settings.from_env(env_file=str(env_file))
    assert (s.mode, s.bootstrap_servers, s.linger_ms) == (Mode.KAFKA, "set:1", 5)


def test_sample_env_documents_every_variable_with_its_default():
    """The .sample.env block lists every variable in OpenAlgo's KEY = 'value' style."""
    text = sample_env()
    for var in VARIABLES:
        assert f"{var.name} = '{var.default}'" in text


def test_a_property_librdkafka_refuses_stops_start_up():
    """A pass-through property librdkafka does not know fails when the publisher is built, with
    a ConfigError naming where it came from."""
    from openalgo_events import KafkaEventPublisher

    settings = Settings.from_env({**KAFKA, "KAFKA_SPOOL_PATH": ":memory:",
                                  "KAFKA_LIBRDKAFKA_NO_SUCH_PROPERTY": "1"})
    with pytest.raises(ConfigError, match="KAFKA_LIBRDKAFKA_"):
        KafkaEventPublisher("127.0.0.1:9", settings=settings)
