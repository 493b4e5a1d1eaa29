"""Producers evolve without breaking ingestion: unknown fields kept, ignored or refused by
policy; a schema_version newer than the reader knows is refused as unsupported_version."""

from __future__ import annotations

import orjson
import pytest

from schemas import AnalysisEvent, ChatEvent, Decoded, MetricEvent, Reason, Rejected, decode, encode
from schemas.envelope import MAX_ATTRIBUTES_BYTES
from streams.worker import telemetry

TENANT = "3f2b8c1e-8d4a-4c3b-9f7e-2a1b0c9d8e7f"
METRIC = {
    "tenant_id": TENANT,
    "dedupe_id": "evt-1",
    "name": "cpu.usage",
    "value": 12.5,
    "occurred_at": "2024-05-01T12:00:00Z",
    "tags": {"host": "a"},
}


def metric(policy: str | None = None, **change: object) -> Decoded | Rejected:
    context = {"unknown_fields": policy} if policy else None
    return decode(orjson.dumps({**METRIC, **change}), MetricEvent, TENANT.encode(), context)


def test_unknown_fields_are_kept_by_default_and_named() -> None:
    result = metric(region="eu-west-1", retries={"count": 3, "last": [1, 2]})
    assert isinstance(result, Decoded), result
    assert result.unknown == ("region", "retries")
    assert result.event.attributes == {"region": "eu-west-1", "retries": {"count": 3, "last": [1, 2]}}
    assert result.event.name == "cpu.usage"  # the known fields are untouched


def test_kept_fields_go_back_to_the_top_level_when_encoded() -> None:
    result = metric(region="eu")
    assert isinstance(result, Decoded)
    wire = orjson.loads(encode(result.event))
    assert wire["region"] == "eu" and "attributes" not in wire
    again = decode(encode(result.event), MetricEvent)
    assert isinstance(again, Decoded) and again.event == result.event


def test_an_event_without_unknown_fields_has_no_attributes() -> None:
    result = metric()
    assert isinstance(result, Decoded) and result.event.attributes is None and result.unknown == ()


def test_a_field_named_attributes_is_an_unknown_field_like_any_other() -> None:
    result = metric(attributes={"x": 1})
    assert isinstance(result, Decoded)
    assert result.event.attributes == {"attributes": {"x": 1}}
    assert isinstance(metric("reject", attributes={"x": 1}), Rejected)


def test_ignore_drops_them_but_still_names_them() -> None:
    result = metric("ignore", region="eu")
    assert isinstance(result, Decoded)
    assert result.event.attributes is None and result.unknown == ("region",)


def test_reject_refuses_the_record_naming_the_fields() -> None:
    result = metric("reject", region="eu", zone="b")
    assert isinstance(result, Rejected)
    assert result.reason is Reason.UNKNOWN_FIELD
    assert "'region'" in result.detail and "'zone'" in result.detail
    assert result.unknown == ("region", "zone")
    assert isinstance(metric("reject"), Decoded), "known fields alone are accepted under reject"


def test_the_rest_of_the_contract_stays_strict_under_keep() -> None:
    result = metric(value="12.5", region="eu")
    assert isinstance(result, Rejected) and result.reason is Reason.INVALID_EVENT and "value" in result.detail
    result = metric(name=None, region="eu")
    assert isinstance(result, Rejected) and "name" in result.detail


def with_region(value: bytes) -> bytes:
    """A metric whose unknown field `region` has this JSON text as its value."""
    return orjson.dumps({**METRIC, "region": 0}).replace(b'"region":0', b'"region":' + value)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (with_region(b'"a\\u0000b"'), "NUL"),
        (with_region(b'{"k\\u0000": 1}'), "NUL"),
        (with_region(orjson.dumps("x" * (MAX_ATTRIBUTES_BYTES + 1))), "bytes once serialised"),
        (with_region(str(2**64).encode()), "cannot be stored"),
    ],
)
def test_kept_fields_are_bounded_like_any_stored_json(raw: bytes, words: str) -> None:
    result = decode(raw, MetricEvent)
    assert isinstance(result, Rejected), result
    assert result.reason is Reason.INVALID_EVENT
    assert words in result.detail and "'region'" in result.detail and "kept as attributes" in result.detail


def test_kept_fields_are_bounded_in_depth() -> None:
    deep: object = 1
    for _ in range(70):
        deep = [deep]
    result = metric(region=deep)
    assert isinstance(result, Rejected) and "levels deep" in result.detail


@pytest.mark.parametrize("model", [MetricEvent, ChatEvent, AnalysisEvent])
def test_every_kind_knows_version_1(model: type) -> None:
    assert model.SCHEMA_VERSION == 1


def test_schema_version_is_recorded_absent_or_known() -> None:
    one = metric(schema_version=1)
    assert isinstance(one, Decoded) and one.event.schema_version == 1
    absent = metric()
    assert isinstance(absent, Decoded) and absent.event.schema_version is None


@pytest.mark.parametrize("version", [2, 7, 40_000, 2**70])
def test_a_newer_major_version_is_unsupported_whatever_else_it_carries(version: int) -> None:
    raw = orjson.dumps({**METRIC, "value": "changed meaning", "new_field": 1, "schema_version": 0})
    raw = raw.replace(b'"schema_version":0', b'"schema_version":' + str(version).encode())
    for policy in ("keep", "reject"):
        result = decode(raw, MetricEvent, None, {"unknown_fields": policy})
        assert isinstance(result, Rejected) and result.reason is Reason.UNSUPPORTED_VERSION, result
        assert str(version) in result.detail


@pytest.mark.parametrize("version", [0, -1, True, "2", 1.0, 2.5, None])
def test_a_version_that_is_not_a_positive_integer_is_invalid(version: object) -> None:
    result = metric(schema_version=version)
    if version is None:
        assert isinstance(result, Decoded)  # null is "not given"
        return
    assert isinstance(result, Rejected) and result.reason is Reason.INVALID_EVENT, result
    assert "schema_version" in result.detail


def test_chat_and_analysis_keep_unknown_fields_too() -> None:
    chat = {
        "tenant_id": TENANT,
        "dedupe_id": "c",
        "conversation_id": TENANT,
        "role": "user",
        "content": "hi",
        "occurred_at": "2024-05-01T12:00:00Z",
        "locale": "fr",
    }
    result = decode(orjson.dumps(chat), ChatEvent, None, {"max_content_bytes": 10, "unknown_fields": "keep"})
    assert isinstance(result, Decoded) and result.event.attributes == {"locale": "fr"}
    analysis = {**chat, "analysis_id": TENANT, "status": "pending"}
    del analysis["conversation_id"], analysis["role"], analysis["content"]
    result = decode(orjson.dumps(analysis), AnalysisEvent, None, {"unknown_fields": "reject"})
    assert isinstance(result, Rejected) and result.reason is Reason.UNKNOWN_FIELD and "'locale'" in result.detail


def _counted(topic: str) -> dict[str, float]:
    return {
        s.labels["field"]: s.value
        for m in telemetry.REGISTRY.collect()
        if m.name == "eventsink_unknown_fields"
        for s in m.samples
        if s.name.endswith("_total") and s.labels["topic"] == topic
    }


def test_unknown_fields_are_counted_per_topic_and_name_with_bounded_names() -> None:
    topic = "evolution-test-topic"
    for i in range(telemetry.MAX_UNKNOWN_FIELD_NAMES + 20):
        telemetry.count_unknown_fields(topic, metric(**{f"f{i:03d}": 1, "region": "eu"}))
    telemetry.count_unknown_fields(topic, metric("reject", region="eu"))
    telemetry.count_unknown_fields(topic, metric())
    counted = _counted(topic)
    assert counted["region"] == telemetry.MAX_UNKNOWN_FIELD_NAMES + 21
    assert len(counted) == telemetry.MAX_UNKNOWN_FIELD_NAMES + 1  # the capped names and (other)
    assert counted[telemetry.OTHER_FIELDS] == 21  # f099 .. f119: the names past the cap
    long = "x" * 500
    telemetry.count_unknown_fields("evolution-other-topic", metric(**{long: 1}))
    assert _counted("evolution-other-topic") == {"x" * telemetry.MAX_FIELD_LABEL: 1.0}
