"""Value format confluent-json: values framed by Confluent's Schema Registry serializers are
unframed, judged by eventsink's own contract, and keep their schema id; `json` stays strict.

Records are framed by confluent-kafka's own JSONSerializer against its mock registry client, and,
where a frame must be wrong, by hand after Confluent's documented wire format (magic byte 0, the
schema id as 4 bytes big-endian, the payload)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from schemas import ChatEvent, Decoded, MetricEvent, Reason, Rejected, decode
from schemas.framing import SCHEMA_ID, decode_confluent_json
from streams.kinds import all_kinds
from streams.settings import SettingsError, load
from tests.truthful import untrue

PUBLISHED = Path(__file__).resolve().parents[2] / "schemas" / "published"
TENANT = "3f2b8c1e-8d4a-4c3b-9f7e-2a1b0c9d8e7f"
METRIC = {
    "tenant_id": TENANT,
    "dedupe_id": "evt-1",
    "name": "cpu.usage",
    "value": 12.5,
    "occurred_at": "2024-05-01T12:00:00.000001Z",
    "tags": {"host": "a"},
}
# What a producer's own registered schema may be: looser than eventsink's contract.
LOOSE = json.dumps({"$schema": "http://json-schema.org/draft-07/schema#", "title": "Loose", "type": "object"})


def serializer(client: SchemaRegistryClient, schema: str) -> Any:
    return JSONSerializer(schema, client)


def framed_by_confluent(obj: dict[str, Any], schema: str, topic: str = "metrics") -> tuple[bytes, int]:
    """(value as Confluent's JSONSerializer writes it, the id the registry gave its schema)."""
    client = SchemaRegistryClient.new_client({"url": "mock://eventsink-unit"})
    value = serializer(client, schema)(obj, SerializationContext(topic, MessageField.VALUE))
    return value, client.get_latest_version(f"{topic}-value").schema_id


def frame(schema_id: int, payload: bytes, magic: int = 0) -> bytes:
    return struct.pack(">bI", magic, schema_id) + payload


def test_a_value_framed_by_confluents_serializer_is_decoded_with_its_schema_id() -> None:
    value, schema_id = framed_by_confluent(METRIC, (PUBLISHED / "metric.schema.json").read_text())
    assert value[:1] == b"\x00" and int.from_bytes(value[1:5], "big") == schema_id
    result = decode_confluent_json(value, MetricEvent, TENANT.encode())
    assert isinstance(result, Decoded), result
    plain = decode(orjson.dumps(METRIC), MetricEvent, TENANT.encode())
    assert isinstance(plain, Decoded)
    assert result.event.model_dump(exclude={"attributes"}) == plain.event.model_dump(exclude={"attributes"})
    assert result.event.attributes == {SCHEMA_ID: schema_id}
    assert result.unknown == ()


def test_unknown_fields_are_kept_next_to_the_schema_id_and_a_large_id_is_read_unsigned() -> None:
    result = decode_confluent_json(frame(2**32 - 1, orjson.dumps({**METRIC, "region": "eu"})), MetricEvent)
    assert isinstance(result, Decoded), result
    assert result.event.attributes == {"region": "eu", SCHEMA_ID: 2**32 - 1}
    assert result.unknown == ("region",)
    ignored = decode_confluent_json(
        frame(9, orjson.dumps({**METRIC, "region": "eu"})), MetricEvent, None, {"unknown_fields": "ignore"}
    )
    assert isinstance(ignored, Decoded) and ignored.event.attributes == {SCHEMA_ID: 9}


def test_under_json_a_framed_value_stays_invalid_json() -> None:
    value, _ = framed_by_confluent(METRIC, (PUBLISHED / "metric.schema.json").read_text())
    result = decode(value, MetricEvent, TENANT.encode())
    assert isinstance(result, Rejected) and result.reason == Reason.INVALID_JSON


def test_a_framed_value_that_breaks_the_contract_is_refused_for_what_it_breaks() -> None:
    """The producer's registry schema accepted it; eventsink's contract does not."""
    broken = {**METRIC, "value": "12.5", "occurred_at": "yesterday"}
    value, schema_id = framed_by_confluent(broken, LOOSE)
    result = decode_confluent_json(value, MetricEvent, TENANT.encode())
    assert isinstance(result, Rejected) and result.reason == Reason.INVALID_EVENT
    assert result.detail.startswith("value:") and "occurred_at:" in result.detail
    assert f"(Confluent schema id {schema_id})" in result.detail
    assert untrue(result.reason, result.detail, value[5:], TENANT.encode()) is None
    not_json = decode_confluent_json(frame(3, b'{"tenant_id": '), MetricEvent)
    assert isinstance(not_json, Rejected) and not_json.reason == Reason.INVALID_JSON
    not_utf8 = decode_confluent_json(frame(3, b'{"name": "\xff"}'), MetricEvent)
    assert isinstance(not_utf8, Rejected) and not_utf8.reason == Reason.INVALID_UTF8


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (b"", "0 byte(s) is shorter than the 5-byte Confluent header"),
        (b"\x00\x00\x00\x01", "4 byte(s) is shorter than the 5-byte Confluent header"),
        (orjson.dumps(METRIC), "starts with byte 0x7b, not the Confluent magic byte 0x00"),
        (frame(1, orjson.dumps(METRIC), magic=1), "starts with byte 0x01, not the Confluent magic byte 0x00"),
    ],
)
def test_a_value_without_a_well_formed_frame_is_invalid_frame_saying_why(value: bytes, words: str) -> None:
    result = decode_confluent_json(value, MetricEvent, TENANT.encode())
    assert isinstance(result, Rejected) and result.reason == Reason.INVALID_FRAME
    assert words in result.detail
    assert untrue(result.reason, result.detail, value, TENANT.encode()) is None


def test_a_field_named_like_the_schema_id_key_is_refused_not_overwritten() -> None:
    result = decode_confluent_json(frame(4, orjson.dumps({**METRIC, SCHEMA_ID: 99})), MetricEvent)
    assert isinstance(result, Rejected) and result.reason == Reason.INVALID_EVENT
    assert result.detail.startswith(f"{SCHEMA_ID}:")


def test_a_tombstone_and_the_key_rules_are_those_of_json() -> None:
    tomb = decode_confluent_json(None, MetricEvent)
    assert isinstance(tomb, Rejected) and tomb.reason == Reason.INVALID_JSON
    other = "00000000-0000-4000-8000-000000000000"
    mismatch = decode_confluent_json(frame(4, orjson.dumps(METRIC)), MetricEvent, other.encode())
    assert isinstance(mismatch, Rejected) and mismatch.reason == Reason.KEY_MISMATCH


def test_chat_content_limits_apply_behind_the_frame() -> None:
    chat = {
        "tenant_id": TENANT,
        "dedupe_id": "c1",
        "conversation_id": "6a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
        "role": "user",
        "content": "x" * 100,
        "occurred_at": "2024-05-01T12:00:00Z",
    }
    value, _ = framed_by_confluent(chat, (PUBLISHED / "chat.schema.json").read_text(), topic="chat")
    result = decode_confluent_json(value, ChatEvent, None, {"max_content_bytes": 10, "unknown_fields": "keep"})
    assert isinstance(result, Rejected) and result.reason == Reason.TOO_LARGE


def test_the_setting_chooses_each_kinds_decoder_and_json_is_decode_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTSINK_CHAT_VALUE_FORMAT", "confluent-json")
    kinds = {k.name: k for k in all_kinds(load())}
    assert kinds["chat"].value_format == "confluent-json" and kinds["chat"].decode is decode_confluent_json
    # The default costs nothing: the worker calls the codec's decode directly.
    assert kinds["metric"].decode is decode and kinds["analysis"].decode is decode
    monkeypatch.setenv("EVENTSINK_METRIC_VALUE_FORMAT", "avro")
    with pytest.raises(SettingsError, match=r"METRIC_VALUE_FORMAT|metric_value_format"):
        load()
