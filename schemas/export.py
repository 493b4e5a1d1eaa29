"""The wire contract in the formats other languages read, generated from the models so that it
cannot drift from what the workers accept:

- a JSON Schema (draft 2020-12) per event kind: `<kind>.schema.json`;
- an AsyncAPI 3.0 document (`asyncapi.json`) describing the three topics, their keys and
  headers, their dead-letter topics and the `eventsink.*` headers a dead letter carries.

JSON Schema cannot say everything the models check; what it cannot say is written in the
field descriptions and the README ("What the published schemas cannot say").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from schemas.analysis import AnalysisEvent
from schemas.chat import ChatEvent
from schemas.deadletter import (
    H_CONSUMER_GROUP,
    H_DETAIL,
    H_FAILED_AT,
    H_ORIGINAL_SHA256,
    H_ORIGINAL_SIZE,
    H_REASON,
    H_SOURCE_OFFSET,
    H_SOURCE_PARTITION,
    H_SOURCE_TOPIC,
    H_STORED,
    MAX_DETAIL,
    STORED_IN_POSTGRES,
    Reason,
)
from schemas.envelope import Event
from schemas.metric import MetricEvent

DIALECT = "https://json-schema.org/draft/2020-12/schema"
ASYNCAPI = "3.0.0"
KAFKA_BINDING = "0.5.0"
MODELS: dict[str, type[Event]] = {"metric": MetricEvent, "chat": ChatEvent, "analysis": AnalysisEvent}
ASYNCAPI_FILE = "asyncapi.json"
GENERATED = "Generated from the pydantic models by `eventsink schema export`; do not edit."


@dataclass(frozen=True)
class Topic:
    """Where one event kind travels: its topic and its dead-letter topic."""

    kind: str
    name: str
    dlq: str


class _Generator(GenerateJsonSchema):
    """pydantic's generator, with a dict's key constraints all in `propertyNames`.

    pydantic puts a key pattern in `patternProperties`, which leaves a key that does not match
    (one holding NUL) unconstrained; the models refuse it, so the schema must too.
    """

    def dict_schema(self, schema: core_schema.DictSchema) -> JsonSchemaValue:
        json_schema = super().dict_schema(schema)
        by_pattern = json_schema.pop("patternProperties", None)
        if by_pattern:
            ((pattern, values),) = by_pattern.items()
            json_schema["additionalProperties"] = values
            json_schema.setdefault("propertyNames", {})["pattern"] = pattern
        return json_schema


def file_name(kind: str) -> str:
    return f"{kind}.schema.json"


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of one event kind's record value."""
    model = MODELS[kind]
    body = model.model_json_schema(schema_generator=_Generator)
    # The tolerant reader: with the default policy (keep) a field the contract does not know is
    # accepted and stored in the row's `attributes`.
    body["additionalProperties"] = True
    body["description"] = (
        f"{body['description']} Fields not listed here are accepted and kept in the row's `attributes` "
        f"(EVENTSINK_{kind.upper()}_UNKNOWN_FIELDS=keep, the default), dropped (ignore), or refused as "
        "unknown_field (reject)."
    )
    return {"$schema": DIALECT, "$comment": GENERATED, **body}


def _key() -> dict[str, Any]:
    return {
        "type": "string",
        "format": "uuid",
        "description": (
            "The event's tenant_id as UTF-8 text, so that a tenant's events stay in one partition. Optional: "
            "a record without a key is accepted; a key naming another tenant is refused as key_mismatch."
        ),
    }


def _dlq_headers(topic: Topic) -> dict[str, Any]:
    digits = {"type": "string", "pattern": "^[0-9]+$"}
    return {
        "type": "object",
        "description": (
            "The original record's headers first (any of them named eventsink.* dropped), then these. Kafka "
            "header values are bytes: these are UTF-8 text."
        ),
        "properties": {
            H_REASON: {
                "type": "string",
                "enum": [r.value for r in Reason],
                "description": "Why the record was not applied: a stable, machine-readable code.",
            },
            H_DETAIL: {
                "type": "string",
                "maxLength": MAX_DETAIL,
                "description": "For people: which field, which rule.",
            },
            H_SOURCE_TOPIC: {"type": "string", "const": topic.name, "description": "Where the record came from."},
            H_SOURCE_PARTITION: {**digits, "description": "Its partition there."},
            H_SOURCE_OFFSET: {**digits, "description": "Its offset there."},
            H_FAILED_AT: {"type": "string", "format": "date-time", "description": "When it was refused."},
            H_CONSUMER_GROUP: {"type": "string", "description": "The consumer group that refused it."},
            H_STORED: {
                "type": "string",
                "const": STORED_IN_POSTGRES.decode(),
                "description": (
                    "Present when this record is not the whole original (too large for the topic, or neither key "
                    "nor value): the original is in PostgreSQL, found by consumer group, source topic, partition "
                    "and offset, and `eventsink dlq replay` sends it from there."
                ),
            },
            H_ORIGINAL_SIZE: {**digits, "description": "With eventsink.stored: bytes of the original value."},
            H_ORIGINAL_SHA256: {
                "type": "string",
                "pattern": "^[0-9a-f]{64}$",
                "description": "With eventsink.stored: hex SHA-256 of the original value.",
            },
        },
        "required": [
            H_REASON,
            H_DETAIL,
            H_SOURCE_TOPIC,
            H_SOURCE_PARTITION,
            H_SOURCE_OFFSET,
            H_FAILED_AT,
            H_CONSUMER_GROUP,
        ],
    }


def _embedded(schema: dict[str, Any]) -> dict[str, Any]:
    """A kind's schema inside the AsyncAPI document (whose schema format is draft-07's superset)."""
    return {k: v for k, v in schema.items() if k not in ("$schema", "$comment")}


def asyncapi(topics: Sequence[Topic], group: str, partitions: int) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of eventsink: what it receives, and what it sends to the DLQs."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    kafka = {"bindingVersion": KAFKA_BINDING}
    for t in topics:
        model, dead = MODELS[t.kind], f"{t.kind}DeadLetter"
        schemas[model.__name__] = _embedded(json_schema(t.kind))
        messages[t.kind] = {
            "name": t.kind,
            "title": f"{t.kind} event",
            "summary": (model.__doc__ or "").strip(),
            "contentType": "application/json",
            "headers": {
                "type": "object",
                "description": "Any headers: eventsink reads none of them, and a dead letter keeps them.",
            },
            "payload": {"$ref": f"#/components/schemas/{model.__name__}"},
            "bindings": {"kafka": {"key": _key(), **kafka}},
        }
        messages[dead] = {
            "name": dead,
            "title": f"{t.kind} dead letter",
            "summary": f"A record of topic {t.name} that could not be applied, with why and where from.",
            "contentType": "application/octet-stream",
            "headers": _dlq_headers(t),
            "payload": {
                "description": (
                    "The original value, byte for byte (possibly not JSON at all: that may be why it is here); "
                    "with eventsink.stored, a truncated copy."
                )
            },
            "bindings": {"kafka": {"key": {"description": "The original key, byte for byte."}, **kafka}},
        }
        source_channel, dlq_channel = t.kind, f"{t.kind}DeadLetters"
        channels[source_channel] = {
            "address": t.name,
            "title": f"{t.kind} events",
            "description": f"Published by services; EVENTSINK_{t.kind.upper()}_TOPIC names it (default {t.name}).",
            "messages": {t.kind: {"$ref": f"#/components/messages/{t.kind}"}},
            "bindings": {"kafka": {"topic": t.name, "partitions": partitions, **kafka}},
        }
        channels[dlq_channel] = {
            "address": t.dlq,
            "title": f"{t.kind} dead letters",
            "description": (
                f"Records of {t.name} that were not applied. `eventsink dlq replay` sends them back to {t.name}."
            ),
            "messages": {dead: {"$ref": f"#/components/messages/{dead}"}},
            "bindings": {"kafka": {"topic": t.dlq, "partitions": partitions, **kafka}},
        }
        operations[f"apply_{t.kind}"] = {
            "action": "receive",
            "title": f"Apply {t.kind} events",
            "summary": "Validated, deduplicated on (tenant_id, dedupe_id) and written to PostgreSQL exactly once.",
            "channel": {"$ref": f"#/channels/{source_channel}"},
            "messages": [{"$ref": f"#/channels/{source_channel}/messages/{t.kind}"}],
            "bindings": {"kafka": {"groupId": {"type": "string", "enum": [group]}, **kafka}},
        }
        operations[f"dead_letter_{t.kind}"] = {
            "action": "send",
            "title": f"Dead-letter {t.kind} records",
            "channel": {"$ref": f"#/channels/{dlq_channel}"},
            "messages": [{"$ref": f"#/channels/{dlq_channel}/messages/{dead}"}],
        }
    versions = "+".join(f"{t.kind}.{MODELS[t.kind].SCHEMA_VERSION}" for t in topics)
    return {
        "asyncapi": ASYNCAPI,
        "info": {
            "title": "eventsink",
            "version": versions,
            "description": (
                "Kafka metric, chat and analysis events into PostgreSQL with exactly-once effects. The version "
                f"names each kind's schema_version. Topic names are the defaults. {GENERATED}"
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }


def render(document: dict[str, Any]) -> str:
    """Stable text: the same models always give the same bytes."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def documents(topics: Sequence[Topic], group: str, partitions: int) -> dict[str, str]:
    """Every published file: name -> text."""
    files = {file_name(t.kind): render(json_schema(t.kind)) for t in topics}
    files[ASYNCAPI_FILE] = render(asyncapi(topics, group, partitions))
    return files
