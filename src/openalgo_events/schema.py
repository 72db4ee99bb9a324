"""Contracts for the systems on the other side, generated from the catalog.

JSON Schema (draft 2020-12) for the envelope and for each event type's ``data``, an
AsyncAPI 3.0 document for both topics (keys, headers, messages), and the Socket.IO side of
connection state recovery (``socketio-recovery.schema.json``: the offset each browser payload
carries, the client's ``auth``, the ``openalgo_events_recovery`` status). The files are
checked in under ``openalgo_events/schemas``; ``openalgo-events schemas generate --check``
fails when they no longer match the catalog.

>>> envelope_schema()["required"][:2]
['event_id', 'event_type']
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .catalog import CATALOG, Catalog, EventSpec, Field
from .config import Settings
from .envelope import CLOUDEVENTS_SPEC_VERSION, CONTENT_TYPE, ENVELOPE_KEYS, SCHEMA_VERSION
from .recovery.offsets import AUTH_KEY, MAX_CURSOR_CHARS, REASONS, STATUS_EVENT
from .spool import REPLAY_HEADER

DRAFT = "https://json-schema.org/draft/2020-12/schema"
ID_BASE = "urn:openalgo-events:schema:"
SCHEMA_DIR = Path(__file__).parent / "schemas"
ENVELOPE_FILE = "envelope.schema.json"
ASYNCAPI_FILE = "asyncapi.json"
RECOVERY_FILE = "socketio-recovery.schema.json"
KAFKA_BINDING_VERSION = "0.5.0"
# Modules that register event types when imported; the contracts cover their events too.
CATALOG_MODULES = ("openalgo_events.integrations.openalgo",)

_EXAMPLE_STRINGS = {
    "symbol": "SBIN-EQ", "action": "BUY", "orderid": "250129000012345", "mode": "live",
    "status": "success", "order_status": "complete", "message": "Order placed",
    "broker": "angel", "exchange": "NSE", "price_type": "MARKET", "product_type": "MIS",
    "notification_type": "position_match", "user": "alice", "ip_address": "192.168.1.100",
    "user_agent": "Mozilla/5.0", "event": "gtt.triggered", "trigger_id": "GTT42",
    "triggered_order_id": "250129000012346", "rejection_reason": "", "pricetype": "LIMIT",
    "product": "CNC",
}
_EXAMPLE_BY_TYPE: dict[str, Any] = {"integer": 1, "number": 850.5, "boolean": True,
                                    "object": {}, "array": []}


def published_catalog() -> Catalog:
    """The catalog with every event type the package itself defines, wherever registered.

    Generate in a fresh process (the ``schemas generate`` command): types registered at run
    time, such as mirrored Socket.IO emits, are not part of the contract.
    """
    for name in CATALOG_MODULES:
        importlib.import_module(name)
    return CATALOG


def data_file(event_type: str) -> str:
    return f"{event_type}.data.schema.json"


def _field_schema(item: Field) -> dict[str, Any]:
    types = list(item.type) if isinstance(item.type, tuple) else item.type
    out: dict[str, Any] = {"type": types}
    if item.description:
        out["description"] = item.description
    if item.type == ("number", "string"):
        out["description"] = (out.get("description", "") + " (a number, or a numeric string "
                              "as OpenAlgo sends it)").strip()
    return out


def data_schema(spec: EventSpec) -> dict[str, Any]:
    """The JSON Schema of one event type's ``data``: known fields typed, others allowed."""
    schema: dict[str, Any] = {
        "$schema": DRAFT,
        "$id": f"{ID_BASE}data:{spec.name}",
        "title": f"{spec.name} data",
        "description": spec.description,
        "type": "object",
        "properties": {f.name: _field_schema(f) for f in spec.fields},
        "required": list(spec.required),
        "additionalProperties": True,
    }
    if spec.forbidden:
        schema["propertyNames"] = {"not": {"enum": sorted(spec.forbidden)}}
    return schema


def envelope_schema(catalog: Catalog = CATALOG) -> dict[str, Any]:
    """The JSON Schema of every message value on the order topic."""
    return {
        "$schema": DRAFT,
        "$id": f"{ID_BASE}envelope",
        "title": "openalgo-events envelope",
        "description": ("The Kafka value of every event: compact UTF-8 JSON. The key is user_id; "
                        "the headers repeat event_id, event_type, source and timestamp as "
                        "CloudEvents attributes. A consumer must ignore unknown event types and "
                        "deduplicate by event_id (delivery is at least once)."),
        "type": "object",
        "properties": {
            "event_id": {"type": "string", "format": "uuid",
                         "description": "UUIDv7, unique per event; the same on a redelivery or "
                                        "a replay, so use it to deduplicate"},
            "event_type": {"type": "string", "enum": list(catalog),
                           "description": "selects the schema of data"},
            "timestamp": {"type": "string", "format": "date-time",
                          "description": "RFC 3339 UTC with microseconds, e.g. "
                                         "2026-01-29T10:30:45.123456Z"},
            "user_id": {"type": "string", "minLength": 1,
                        "description": "OpenAlgo user; also the Kafka key, so one user's events "
                                       "keep their order"},
            "source": {"type": "string", "description": "the publishing system, 'openalgo'"},
            "schema_version": {"type": "integer", "const": SCHEMA_VERSION},
            "data": {"type": "object",
                     "description": "the event's fields; see <event_type>.data.schema.json"},
            "sequence": {"type": "integer", "minimum": 0,
                         "description": "optional per-user sequence number"},
        },
        "required": list(ENVELOPE_KEYS),
        "additionalProperties": False,
    }


def example_data(spec: EventSpec) -> dict[str, Any]:
    """A plausible ``data`` with every field of ``spec`` filled in (for docs and tests)."""
    out: dict[str, Any] = {}
    for item in spec.fields:
        first = item.type[0] if isinstance(item.type, tuple) else item.type
        out[item.name] = _EXAMPLE_STRINGS.get(item.name, f"example {item.name}") \
            if first == "string" else _EXAMPLE_BY_TYPE[first]
    return out


def _headers_schema(catalog: Catalog) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Kafka record headers (UTF-8 strings): CloudEvents binary mode.",
        "properties": {
            "ce_specversion": {"type": "string", "const": CLOUDEVENTS_SPEC_VERSION},
            "ce_id": {"type": "string", "description": "= event_id"},
            "ce_type": {"type": "string", "enum": list(catalog), "description": "= event_type"},
            "ce_source": {"type": "string", "description": "= source"},
            "ce_time": {"type": "string", "description": "= timestamp"},
            "content-type": {"type": "string", "const": CONTENT_TYPE},
            REPLAY_HEADER: {"type": "string", "const": "1",
                            "description": "present on copies re-sent by 'openalgo-events "
                                           "replay'; the event_id is the original's"},
        },
        "required": ["ce_specversion", "ce_id", "ce_type", "ce_source", "ce_time",
                     "content-type"],
    }


def _embedded(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A schema without ``$schema``/``$id``, for embedding in the AsyncAPI document."""
    return {k: v for k, v in schema.items() if k not in ("$schema", "$id")}


def _topic_binding(partitions: int, retention_ms: int, max_bytes: int) -> dict[str, Any]:
    return {"kafka": {"partitions": partitions, "replicas": 3,
                      "topicConfiguration": {"retention.ms": retention_ms,
                                             "max.message.bytes": max_bytes,
                                             "cleanup.policy": ["delete"]},
                      "bindingVersion": KAFKA_BINDING_VERSION}}


def asyncapi(catalog: Catalog = CATALOG, settings: Settings | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0 document for the order topic (sent) and the ESB topic (received)."""
    from .ops.topics import DAY_MS, PARTITIONS

    settings = settings or Settings()
    key = {"kafka": {"key": {"type": "string", "description": "user_id (UTF-8)"},
                     "bindingVersion": KAFKA_BINDING_VERSION}}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {"Envelope": _embedded(envelope_schema(catalog)),
                               "Headers": _headers_schema(catalog)}
    for name, spec in catalog.items():
        data_name = "".join(part.title() for part in name.split("_")) + "Data"
        schemas[data_name] = _embedded(data_schema(spec))
        example = {"event_id": "01948f2e-8a4b-7c3d-9e5f-0123456789ab", "event_type": name,
                   "timestamp": "2026-01-29T10:30:45.123456Z",
                   "user_id": spec.system_user or "alice", "source": "openalgo",
                   "schema_version": SCHEMA_VERSION, "data": example_data(spec)}
        messages[name] = {
            "name": name,
            "title": name,
            "summary": spec.description,
            "contentType": CONTENT_TYPE,
            "headers": {"$ref": "#/components/schemas/Headers"},
            "payload": {"allOf": [
                {"$ref": "#/components/schemas/Envelope"},
                {"type": "object", "properties": {
                    "event_type": {"const": name},
                    "data": {"$ref": f"#/components/schemas/{data_name}"}}},
            ]},
            "correlationId": {"location": "$message.payload#/event_id"},
            "bindings": key,
            "examples": [{"name": f"{name} example", "payload": example,
                          "headers": {"ce_specversion": CLOUDEVENTS_SPEC_VERSION,
                                      "ce_id": example["event_id"], "ce_type": name,
                                      "ce_source": "openalgo", "ce_time": example["timestamp"],
                                      "content-type": CONTENT_TYPE}}],
        }
    messages["inbound_event"] = {
        "name": "inbound_event",
        "title": "inbound event",
        "summary": "A command or acknowledgment an external system sends to OpenAlgo, in the "
                   "same envelope; its event_type selects the handler.",
        "contentType": CONTENT_TYPE,
        "payload": {"allOf": [{"$ref": "#/components/schemas/Envelope"},
                              {"type": "object",
                               "properties": {"event_type": {"type": "string"}}}]},
        "bindings": key,
    }
    order_refs = {name: {"$ref": f"#/components/messages/{name}"} for name in catalog}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "openalgo-events",
            "version": f"{SCHEMA_VERSION}.0.0",
            "description": ("Order events and notifications published by OpenAlgo to Kafka, "
                            "and the commands it accepts back. Delivery is at least once: "
                            "deduplicate by event_id. One user's events are in order within "
                            "the user's partition (key = user_id)."),
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {"kafka": {"host": "localhost:9092", "protocol": "kafka",
                              "description": "your cluster (KAFKA_BOOTSTRAP_SERVERS)"}},
        "channels": {
            "orderEvents": {
                "address": settings.order_events_topic,
                "description": "Everything OpenAlgo publishes: orders, updates, notifications.",
                "messages": order_refs,
                "bindings": _topic_binding(PARTITIONS, 7 * DAY_MS, settings.max_message_bytes),
            },
            "esbEvents": {
                "address": settings.esb_events_topic,
                "description": "Commands from external systems to OpenAlgo (optional).",
                "messages": {"inbound_event": {"$ref": "#/components/messages/inbound_event"}},
                "bindings": _topic_binding(PARTITIONS, DAY_MS, settings.max_message_bytes),
            },
        },
        "operations": {
            "publishOrderEvents": {
                "action": "send",
                "channel": {"$ref": "#/channels/orderEvents"},
                "summary": "OpenAlgo publishes each event once it happened (at least once).",
                "messages": [{"$ref": f"#/channels/orderEvents/messages/{name}"}
                             for name in catalog],
            },
            "receiveEsbEvents": {
                "action": "receive",
                "channel": {"$ref": "#/channels/esbEvents"},
                "summary": "OpenAlgo's inbound consumer handles commands from external systems.",
                "messages": [{"$ref": "#/channels/esbEvents/messages/inbound_event"}],
            },
        },
        "components": {"schemas": schemas, "messages": messages},
    }


_OFFSET = r"[a-z][0-9a-f]{8}:[0-9]{1,10}:(-1|[0-9]{1,19})"


def recovery_schema() -> dict[str, Any]:
    """Socket.IO connection state recovery on the wire (``ORDER_EVENT_SOCKETIO_RECOVERY``)."""
    return {
        "$schema": DRAFT,
        "$id": f"{ID_BASE}socketio-recovery",
        "title": "openalgo-events Socket.IO recovery",
        "description": (
            "With ORDER_EVENT_SOCKETIO_RECOVERY=TRUE every Socket.IO event the package emits "
            f"carries its position in its payload ({AUTH_KEY}); a client sends the cursor it "
            f"keeps as auth.{AUTH_KEY} on every connect and, after the events it missed, gets "
            f"the {STATUS_EVENT} event. With recovery off the payloads carry no offset and no "
            "status is sent."),
        "$defs": {
            "offset": {
                "type": "string", "pattern": f"^{_OFFSET}$",
                "description": (
                    "stream:partition:offset. The stream is k + 8 hex digits for a Kafka topic "
                    "(KAFKA mode: the record's partition and offset, the same in every app "
                    "process) or s + 8 hex digits for one Socket.IO transport's sequence "
                    "(SOCKETIO and BOTH modes: partition 0, offsets from 1, new at each "
                    "start). -1: no event of that partition yet."),
            },
            "cursor": {
                "type": "string", "maxLength": MAX_CURSOR_CHARS,
                "pattern": f"^{_OFFSET}(,{_OFFSET})*$",
                "description": ("For each partition of one stream, the offset of the last event "
                                "received, joined by commas."),
            },
            "payload": {
                "type": "object",
                "description": ("An event's browser payload (its data less the catalog's "
                                "Kafka-only fields) with its offset added."),
                "properties": {AUTH_KEY: {"$ref": "#/$defs/offset"}},
                "required": [AUTH_KEY],
                "additionalProperties": True,
            },
            "auth": {
                "type": "object",
                "description": "The client's Socket.IO auth payload; the app's own keys stay.",
                "properties": {AUTH_KEY: {"$ref": "#/$defs/cursor"}},
                "additionalProperties": True,
            },
            "status": {
                "type": "object",
                "description": (f"The {STATUS_EVENT} event: sent to each socket once its "
                                 "missed events were sent (recovered) or could not be, before "
                                 "any new event."),
                "properties": {
                    "recovered": {"type": "boolean",
                                  "description": "every event missed since offset was sent"},
                    "count": {"type": "integer", "minimum": 0,
                              "description": "how many events were sent"},
                    "offset": {"$ref": "#/$defs/cursor",
                               "description": "the cursor to keep from now on"},
                    "reason": {"type": "string", "enum": list(REASONS),
                               "description": "why not recovered (absent when recovered)"},
                },
                "required": ["recovered", "count", "offset"],
                "additionalProperties": False,
            },
        },
    }


def render(catalog: Catalog | None = None) -> dict[str, str]:
    """Every generated file, by name, as the exact text that is checked in."""
    catalog = published_catalog() if catalog is None else catalog
    docs: dict[str, Any] = {ENVELOPE_FILE: envelope_schema(catalog),
                            ASYNCAPI_FILE: asyncapi(catalog), RECOVERY_FILE: recovery_schema()}
    for name, spec in catalog.items():
        docs[data_file(name)] = data_schema(spec)
    return {name: json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
            for name, doc in docs.items()}


def stale_files(directory: Path = SCHEMA_DIR, catalog: Catalog | None = None) -> list[str]:
    """Names of generated files that are missing, different, or no longer generated."""
    wanted = render(catalog)
    present = {p.name for p in directory.glob("*.json")} if directory.is_dir() else set()
    stale = [name for name, text in wanted.items()
             if name not in present or (directory / name).read_text(encoding="utf-8") != text]
    return sorted(stale + [name for name in present if name not in wanted])


def write(directory: Path = SCHEMA_DIR, catalog: Catalog | None = None) -> list[str]:
    """Write every generated file (removing ones no longer generated); return what changed."""
    changed = stale_files(directory, catalog)
    directory.mkdir(parents=True, exist_ok=True)
    wanted = render(catalog)
    for name in changed:
        path = directory / name
        if name in wanted:
            path.write_text(wanted[name], encoding="utf-8")
        else:
            path.unlink()
    return changed


def load(name: str) -> dict[str, Any]:
    """A checked-in schema by file name, e.g. ``load("envelope.schema.json")``."""
    doc: dict[str, Any] = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    return doc
