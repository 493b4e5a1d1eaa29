"""Values framed by Confluent's Schema Registry serializers (`confluent-json`).

Confluent's JSON Schema serializer (Java `KafkaJsonSchemaSerializer`, .NET `JsonSerializer`,
confluent-kafka-python's `JSONSerializer`) writes a magic byte 0, the schema's registry id as 4
bytes big-endian, then the JSON. A kind whose value format is `confluent-json` takes that
header off, keeps the id in the event's attributes under `confluent_schema_id`, and decodes the
JSON exactly as `json` does (`schemas.codec.decode`): eventsink's contract judges it, not the
producer's registered schema. Records under `json` (the default) never come here, so they pay
nothing for it, and a framed record under `json` stays `invalid_json`.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from schemas.codec import Decoded, Rejected, decode
from schemas.deadletter import Reason
from schemas.envelope import ATTRIBUTES

M = TypeVar("M", bound=BaseModel)

ValueFormat = Literal["json", "confluent-json"]
MAGIC = 0
HEADER_BYTES = 5  # the magic byte and the 4-byte schema id
# Where the frame's schema id is kept: a key of the row's attributes (jsonb).
SCHEMA_ID = "confluent_schema_id"


def unframe(raw: bytes) -> tuple[int, bytes] | Rejected:
    """(schema id, payload) of a Confluent-framed value, or why it is not one."""
    if len(raw) < HEADER_BYTES:
        return Rejected(
            Reason.INVALID_FRAME,
            f"value of {len(raw)} byte(s) is shorter than the {HEADER_BYTES}-byte Confluent header "
            "(magic byte 0 and a 4-byte schema id)",
        )
    if raw[0] != MAGIC:
        return Rejected(
            Reason.INVALID_FRAME,
            f"value starts with byte 0x{raw[0]:02x}, not the Confluent magic byte 0x00 (is it framed by a "
            "Schema Registry serializer?)",
        )
    return int.from_bytes(raw[1:HEADER_BYTES], "big"), raw[HEADER_BYTES:]


def decode_confluent_json(
    raw: bytes | None, model: type[M], key: bytes | None = None, context: dict[str, Any] | None = None
) -> Decoded[M] | Rejected:
    """`schemas.codec.decode` of a Confluent-framed value: total as it is, and the schema id kept."""
    if raw is None:
        return decode(raw, model, key, context)  # a tombstone, said as `json` says it
    framed = unframe(raw)
    if isinstance(framed, Rejected):
        return framed
    schema_id, payload = framed
    result = decode(payload, model, key, context)
    if isinstance(result, Rejected):
        return Rejected(result.reason, f"{result.detail} (Confluent schema id {schema_id})", result.unknown)
    event = result.event
    kept = getattr(event, ATTRIBUTES, None)
    if kept and SCHEMA_ID in kept:
        return Rejected(
            Reason.INVALID_EVENT,
            f"{SCHEMA_ID}: a field of the value has the name under which confluent-json keeps the frame's "
            f"schema id ({schema_id}) in attributes",
            result.unknown,
        )
    attributes = {**kept, SCHEMA_ID: schema_id} if kept else {SCHEMA_ID: schema_id}
    return Decoded(event.model_copy(update={ATTRIBUTES: attributes}), result.unknown)


DECODERS = {"json": decode, "confluent-json": decode_confluent_json}
