"""Secrets by meaning (issue 15, case 4): a credential is recognised by the words in its key,
whatever its case or separators, at every depth, in the publisher, the OpenAlgo adapter, the
Socket.IO mirror and the configuration shown by ``check``."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from openalgo_events import EventPublisher, EventValidationError, MemoryTransport, Settings
from openalgo_events.config import MASK
from openalgo_events.envelope import is_secret_key
from openalgo_events.integrations.openalgo import convert
from tests.doubles.events import synthetic

# Every key the issue measured leaking, plus the other spellings of each word.
SECRET_CORPUS = [
    "apikey", "api_key", "apiKey", "password", "secret", "access_token", "token",
    "Authorization", "x-api-key", "API-KEY", "X-Api-Key", "session_token", "broker_token",
    "auth", "private_key", "apiSecret", "jwt", "Cookie", "set-cookie", "sessionId",
    "client_credentials", "Passwd", "user.password", "totp_code", "refreshToken", "AUTH_CODE",
    "x-auth-token", "privateKey", "db_pwd", "secretAccessKey",
]
# Keys that contain a secret word and name none (the allow-list), or no secret word at all.
NOT_SECRET = ["author", "authorized_quantity", "sessions", "symboltoken", "symbol_token",
              "Instrument-Token", "symbol", "quantity", "broker", "user_agent", "ip_address",
              "orderid", "message", "status"]


def secret_value(key: str) -> str:
    return f"LEAK-{key.upper()}-VALUE"


def corpus_data() -> dict[str, Any]:
    """An order_event whose data carries every secret key at the top level, nested in an object,
    in a list of objects and two levels down."""
    secrets = {key: secret_value(key) for key in SECRET_CORPUS}
    return {"symbol": "SBIN", "action": "BUY", "orderid": "1", "mode": "live", **secrets,
            "request_data": {"symbol": "SBIN", **secrets,
                             "legs": [{"qty": 1, **secrets}], "inner": {"deeper": secrets}}}


@pytest.mark.parametrize("key", SECRET_CORPUS)
def test_secret_words_match_whatever_the_spelling(key):
    """Each corpus key is a secret by the rule (normalised case and separators, word match)."""
    assert is_secret_key(key)


@pytest.mark.parametrize("key", NOT_SECRET)
def test_allow_list_and_plain_fields_are_kept(key):
    """The allow-listed look-alikes and ordinary order fields are not secrets."""
    assert not is_secret_key(key)


def test_publisher_drops_every_secret_at_every_depth():
    """No corpus value is in the envelope's bytes or headers; the other fields are intact."""
    memory = MemoryTransport()
    env = EventPublisher(memory).publish("order_event", "alice", corpus_data())
    raw = env.value + b"".join(v for _, v in env.headers())
    assert b"LEAK-" not in raw
    doc = json.loads(env.value)["data"]
    assert doc["request_data"]["legs"] == [{"qty": 1}]
    assert doc["request_data"]["inner"] == {"deeper": {}}


def test_password_change_refuses_a_credential_at_the_top_level():
    """password_change treats a top-level credential as a caller bug, by meaning too."""
    publisher = EventPublisher(MemoryTransport())
    for key in ("apiKey", "X-Api-Key", "session_token", "new-Password"):
        with pytest.raises(EventValidationError, match="secret"):
            publisher.publish("password_change", "bob", {"user": "bob", "status": "ok",
                                                          "message": "m", key: "x"})


def test_openalgo_adapter_scrubs_by_the_same_rule():
    """A bus event with the corpus at the top level and in request_data converts with none of
    its values left, in the data and in the browser payload keys alike."""
    secrets = {key: secret_value(key) for key in SECRET_CORPUS}
    event = dataclasses.asdict(synthetic("order.placed"))
    event.update(secrets)
    event["request_data"] = {**event["request_data"], **secrets, "nested": [secrets]}
    _, data = convert(event)
    assert "LEAK-" not in json.dumps(data)


def test_check_masks_passthrough_credentials():
    """Pass-through librdkafka properties that can carry a credential are masked in
    ``describe`` (what ``check`` prints); harmless ones are shown."""
    settings = Settings.from_env({
        "KAFKA_LIBRDKAFKA_SASL_KERBEROS_KINIT_CMD": "kinit -t keytab hunter2",
        "KAFKA_LIBRDKAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": "s3cret",
        "KAFKA_LIBRDKAFKA_SSL_KEY_PASSWORD": "pw",
        "KAFKA_LIBRDKAFKA_SASL_OAUTHBEARER_CONFIG": "principal=x secret=y",
        "KAFKA_LIBRDKAFKA_SSL_KEYSTORE_PASSWORD": "pw2",
        "KAFKA_LIBRDKAFKA_SASL_KERBEROS_KEYTAB": "/etc/k.keytab",
        "KAFKA_LIBRDKAFKA_MESSAGE_TIMEOUT_MS": "30000",
    })
    shown = settings.describe()
    for name in ("SASL_KERBEROS_KINIT_CMD", "SASL_OAUTHBEARER_CLIENT_SECRET", "SSL_KEY_PASSWORD",
                 "SASL_OAUTHBEARER_CONFIG", "SSL_KEYSTORE_PASSWORD", "SASL_KERBEROS_KEYTAB"):
        assert shown[f"KAFKA_LIBRDKAFKA_{name}"] == MASK, name
    assert shown["KAFKA_LIBRDKAFKA_MESSAGE_TIMEOUT_MS"] == "30000"
