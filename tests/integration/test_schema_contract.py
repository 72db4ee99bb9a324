"""What really reaches Kafka validates against the checked-in JSON Schemas and AsyncAPI headers."""

from __future__ import annotations

import json

import jsonschema
import pytest

from openalgo_events import KafkaEventPublisher, Settings, schema
from openalgo_events.integrations.openalgo import TOPICS, convert
from tests.doubles.events import sample_events, synthetic
from tests.support import create_topic, read_topic

pytestmark = pytest.mark.broker
VALIDATOR = jsonschema.Draft202012Validator


def _check(instance: object, document: dict[str, object]) -> None:
    VALIDATOR(document, format_checker=VALIDATOR.FORMAT_CHECKER).validate(instance)


def test_every_produced_message_validates_against_the_generated_schemas(kafka_bootstrap, topic,
                                                                        tmp_path):
    """Each catalog event type (example data), every OpenAlgo bus topic in live and analyze mode
    and the captured sandbox events, published through Kafka and read back, validate: value
    against the envelope and its type's data schema, headers against the AsyncAPI headers."""
    create_topic(kafka_bootstrap, topic, partitions=3)
    settings = Settings.from_env({"KAFKA_SPOOL_PATH": str(tmp_path / "spool")})
    publisher = KafkaEventPublisher(kafka_bootstrap, topic, settings=settings)
    catalog = schema.published_catalog()
    envelope_doc = schema.load(schema.ENVELOPE_FILE)
    sent = [publisher.publish(name, "alice", schema.example_data(catalog[name]))
            for name in envelope_doc["properties"]["event_type"]["enum"]]
    bus_events = [synthetic(t, mode) for t in TOPICS for mode in ("live", "analyze")]
    for event in [*bus_events, *sample_events()]:
        event_type, data = convert(event)
        sent.append(publisher.publish(event_type, "kafkatest", data))
    assert publisher.flush(15) == 0  # close() never waits: the relay delivers
    publisher.close()

    messages = read_topic(kafka_bootstrap, topic, len(sent))
    assert sorted(json.loads(m.value())["event_id"] for m in messages) == sorted(
        e.event_id for e in sent)
    headers_doc = schema.load(schema.ASYNCAPI_FILE)["components"]["schemas"]["Headers"]
    seen_types = set()
    for msg in messages:
        value = json.loads(msg.value())
        _check(value, envelope_doc)
        _check(value["data"], schema.load(schema.data_file(value["event_type"])))
        _check({k: v.decode() for k, v in msg.headers()}, headers_doc)
        assert msg.key().decode() == value["user_id"]
        seen_types.add(value["event_type"])
    assert seen_types == set(envelope_doc["properties"]["event_type"]["enum"])
