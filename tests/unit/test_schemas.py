"""The generated contracts: current with the catalog, valid, and matching what is published."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from openalgo_events import CATALOG, EventPublisher, EventSpec, Field, MemoryTransport, schema
from openalgo_events.catalog import Catalog
from openalgo_events.cli import main

VALIDATOR = jsonschema.Draft202012Validator
# The contract's event types, as checked in (the in-process catalog may hold run-time extras).
EVENT_TYPES = schema.load(schema.ENVELOPE_FILE)["properties"]["event_type"]["enum"]


def _validate(instance: Any, document: dict[str, Any]) -> None:
    VALIDATOR(document, format_checker=VALIDATOR.FORMAT_CHECKER).validate(instance)


def test_checked_in_schemas_match_a_fresh_generation(tmp_path):
    """Generating into an empty directory (in a fresh process, as the command does) yields
    exactly the checked-in files, byte for byte."""
    subprocess.run([sys.executable, "-m", "openalgo_events", "schemas", "generate", "--output",
                    str(tmp_path)], check=True, capture_output=True, timeout=60)
    fresh = {p.name: p.read_text() for p in tmp_path.glob("*.json")}
    checked_in = {p.name: p.read_text() for p in schema.SCHEMA_DIR.glob("*.json")}
    assert sorted(fresh) == sorted(checked_in), "run: openalgo-events schemas generate"
    for name, text in fresh.items():
        assert checked_in[name] == text, f"{name} is stale; run: openalgo-events schemas generate"


def test_a_stale_schema_fails_the_check_and_generate_repairs_it(tmp_path):
    """--check exits 1 naming an edited, a missing and an extra file; generate restores them."""
    target = tmp_path / "schemas"
    shutil.copytree(schema.SCHEMA_DIR, target)
    (target / "order_event.data.schema.json").write_text("{}\n")
    (target / schema.ENVELOPE_FILE).unlink()
    (target / "retired_event.data.schema.json").write_text("{}\n")
    runner = CliRunner()
    stale = runner.invoke(main, ["schemas", "generate", "--check", "--output", str(target)])
    assert stale.exit_code == 1
    for name in ("order_event.data.schema.json", schema.ENVELOPE_FILE,
                 "retired_event.data.schema.json"):
        assert name in stale.stderr
    assert runner.invoke(main, ["schemas", "generate", "--output", str(target)]).exit_code == 0
    fresh = runner.invoke(main, ["schemas", "generate", "--check", "--output", str(target)])
    assert fresh.exit_code == 0, fresh.stderr


def test_a_catalog_change_makes_the_schemas_stale():
    """Registering a new event type (or changing one) is detected as stale output."""
    schema.published_catalog()
    extended = Catalog((*(CATALOG[name] for name in EVENT_TYPES),
                        EventSpec("risk_alert", "A risk limit was hit.",
                                  (Field("limit", required=True),))))
    assert schema.stale_files(schema.SCHEMA_DIR, extended) == [
        "asyncapi.json", "envelope.schema.json", "risk_alert.data.schema.json"]


def test_every_generated_schema_is_valid_draft_2020_12():
    """Each file is a valid JSON Schema 2020-12 document with a unique $id."""
    ids = set()
    for path in schema.SCHEMA_DIR.glob("*.schema.json"):
        document = json.loads(path.read_text())
        VALIDATOR.check_schema(document)
        assert document["$schema"] == schema.DRAFT
        ids.add(document["$id"])
    assert len(ids) == len(EVENT_TYPES) + 2  # and the envelope's, and Socket.IO recovery's


def test_the_recovery_schema_takes_what_the_wire_carries_and_refuses_the_rest():
    """socketio-recovery.schema.json: an offset, a cursor of several partitions, a payload
    with its offset and each status shape validate; a malformed offset, a status with an
    unknown reason or an extra key do not."""
    document = schema.load(schema.RECOVERY_FILE)

    def valid(definition: str, instance: Any) -> bool:
        sub = {**document, "$ref": f"#/$defs/{definition}"}
        return VALIDATOR(sub).is_valid(instance)

    assert valid("offset", "k0123abcd:3:1234") and valid("offset", "s89abcdef:0:-1")
    assert not valid("offset", "k0123abcd:3") and not valid("offset", "K0123ABCD:3:1")
    assert valid("cursor", "k0123abcd:0:5,k0123abcd:1:-1")
    assert valid("payload", {"symbol": "SBIN", "openalgo_events_offset": "s89abcdef:0:7"})
    assert not valid("payload", {"symbol": "SBIN"})
    assert valid("auth", {"apikey": "k", "openalgo_events_offset": "s89abcdef:0:7"})
    assert valid("status", {"recovered": True, "count": 3, "offset": "s89abcdef:0:7"})
    assert valid("status", {"recovered": False, "count": 0, "offset": "s89abcdef:0:7",
                            "reason": "too_old"})
    assert not valid("status", {"recovered": False, "count": 0, "offset": "s89abcdef:0:7",
                                "reason": "bored"})
    assert not valid("status", {"recovered": True, "count": 0, "offset": "s89abcdef:0:7",
                                "extra": 1})


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_published_envelopes_validate_against_their_schemas(event_type):
    """An event built by the publisher from catalog example data validates against the envelope
    schema and its type's data schema."""
    transport = MemoryTransport()
    envelope = EventPublisher(transport).publish(event_type, "alice",
                                                 schema.example_data(schema.published_catalog()[event_type]))
    doc = json.loads(envelope.value)
    _validate(doc, schema.load(schema.ENVELOPE_FILE))
    _validate(doc["data"], schema.load(schema.data_file(event_type)))


def test_schemas_reject_what_the_contract_forbids():
    """A missing required field, a wrong type, an unknown envelope key and a secret field fail."""
    data = schema.load(schema.data_file("order_event"))
    with pytest.raises(jsonschema.ValidationError):
        _validate({"symbol": "SBIN-EQ", "action": "BUY", "mode": "live"}, data)  # no orderid
    with pytest.raises(jsonschema.ValidationError):
        _validate({"symbol": "SBIN-EQ", "action": "BUY", "orderid": "1", "mode": "live",
                   "batch_order": "yes"}, data)
    envelope = json.loads(EventPublisher(MemoryTransport()).publish_order_event(
        "alice", "SBIN-EQ", "BUY", "ORD1", "live").value)
    with pytest.raises(jsonschema.ValidationError):
        _validate({**envelope, "api_key": "x"}, schema.load(schema.ENVELOPE_FILE))
    with pytest.raises(jsonschema.ValidationError):
        _validate({"user": "bob", "status": "success", "message": "done", "password": "x"},
                  schema.load(schema.data_file("password_change")))


def _resolve(document: dict[str, Any], pointer: str) -> Any:
    node: Any = document
    for part in pointer.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_asyncapi_document_describes_both_topics_and_every_event():
    """The AsyncAPI 3.0 document names both topics, keys, headers and one message per event
    type; every $ref resolves and every example validates."""
    document = schema.load(schema.ASYNCAPI_FILE)
    assert document["asyncapi"] == "3.0.0"
    channels = document["channels"]
    assert channels["orderEvents"]["address"] == "from_openalgo_order_events"
    assert channels["esbEvents"]["address"] == "from_esb_order_events"
    assert set(channels["orderEvents"]["messages"]) == set(EVENT_TYPES)
    assert document["operations"]["publishOrderEvents"]["action"] == "send"
    assert document["operations"]["receiveEsbEvents"]["action"] == "receive"

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                _resolve(document, node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    schemas = document["components"]["schemas"]
    for name in EVENT_TYPES:
        message = document["components"]["messages"][name]
        assert message["bindings"]["kafka"]["key"]["type"] == "string"
        example = message["examples"][0]
        _validate(example["payload"], schemas["Envelope"])
        data_ref = message["payload"]["allOf"][1]["properties"]["data"]["$ref"]
        _validate(example["payload"]["data"], _resolve(document, data_ref))
        _validate(example["headers"], schemas["Headers"])
