"""The metric wire contract: what is accepted, how it is normalised, why the rest is refused."""

from __future__ import annotations

import json
import tracemalloc
import uuid
from datetime import UTC, datetime

import orjson
import pytest

from schemas import Decoded, MetricEvent, Reason, Rejected, decode, encode
from schemas.codec import dedupe_digest

TENANT = "3f2b8c1e-8d4a-4c3b-9f7e-2a1b0c9d8e7f"


def payload(**change: object) -> dict[str, object]:
    body: dict[str, object] = {
        "tenant_id": TENANT,
        "dedupe_id": "evt-1",
        "name": "cpu.usage",
        "value": 12.5,
        "occurred_at": "2024-05-01T12:00:00.123456Z",
        "tags": {"host": "a"},
    }
    body.update(change)
    return {k: v for k, v in body.items() if v is not None}


def ok(raw: bytes, key: bytes | None = TENANT.encode()) -> MetricEvent:
    result = decode(raw, MetricEvent, key)
    assert isinstance(result, Decoded), result
    return result.event


def refused(raw: bytes | None, key: bytes | None = TENANT.encode()) -> Rejected:
    result = decode(raw, MetricEvent, key)
    assert isinstance(result, Rejected), result
    return result


def test_valid_event_is_normalised_to_utc_keeping_microseconds() -> None:
    event = ok(orjson.dumps(payload(occurred_at="2024-05-01T14:00:00.654321+02:00", unit="%")))
    assert event.tenant_id == uuid.UUID(TENANT)
    assert event.occurred_at == datetime(2024, 5, 1, 12, 0, 0, 654321, tzinfo=UTC)
    assert event.occurred_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert event.unit == "%"


def test_digits_beyond_microseconds_are_truncated_like_postgresql() -> None:
    event = ok(orjson.dumps(payload(occurred_at="2024-05-01T12:00:00.123456789Z")))
    assert event.occurred_at.microsecond == 123456


def test_encode_round_trips() -> None:
    event = ok(orjson.dumps(payload()))
    assert ok(encode(event)) == event
    assert orjson.loads(encode(event))["occurred_at"] == "2024-05-01T12:00:00.123456Z"


def test_key_may_be_absent_or_any_spelling_of_the_tenant() -> None:
    raw = orjson.dumps(payload())
    ok(raw, key=None)
    ok(raw, key=TENANT.upper().encode())


def test_integers_are_numbers_but_booleans_and_strings_are_not() -> None:
    assert ok(orjson.dumps(payload(value=3))).value == 3.0
    assert refused(orjson.dumps(payload(value=True))).reason is Reason.INVALID_EVENT
    assert "value" in refused(orjson.dumps(payload(value="1.5"))).detail


@pytest.mark.parametrize(
    ("raw", "reason", "detail"),
    [
        (b"{not json", Reason.INVALID_JSON, "not JSON"),
        (b"[1, 2]", Reason.NOT_AN_OBJECT, "list"),
        (b'"a string"', Reason.NOT_AN_OBJECT, "str"),
        (orjson.dumps(payload(name=None)), Reason.INVALID_EVENT, "name: Field required"),
        (orjson.dumps(payload(tags=None)), Reason.INVALID_EVENT, "tags: Field required"),
        (orjson.dumps(payload(tenant_id="tenant-42")), Reason.INVALID_EVENT, "tenant_id"),
        (orjson.dumps(payload(tenant_id=42)), Reason.INVALID_EVENT, "tenant_id"),
        (orjson.dumps(payload(dedupe_id="")), Reason.INVALID_EVENT, "dedupe_id"),
        (orjson.dumps(payload(dedupe_id="x" * 129)), Reason.INVALID_EVENT, "dedupe_id"),
        (orjson.dumps(payload()).replace(b"12.5", b"NaN"), Reason.INVALID_EVENT, "NaN"),
        (orjson.dumps(payload()).replace(b"12.5", b"Infinity"), Reason.INVALID_EVENT, "Infinity"),
        (orjson.dumps(payload()).replace(b"12.5", b"1e999"), Reason.INVALID_EVENT, "too large"),
        (orjson.dumps(payload(occurred_at="yesterday")), Reason.INVALID_EVENT, "RFC 3339"),
        (orjson.dumps(payload(occurred_at="1714564800")), Reason.INVALID_EVENT, "RFC 3339"),
        (orjson.dumps(payload(occurred_at=1714564800)), Reason.INVALID_EVENT, "RFC 3339"),
        (orjson.dumps(payload(occurred_at="2024-05-01T12:00:00")), Reason.INVALID_EVENT, "RFC 3339"),
        (
            orjson.dumps(payload(occurred_at="2024-02-30T12:00:00Z")),
            Reason.INVALID_EVENT,
            "occurred_at: Input should be a valid datetime",
        ),
        (b'{"tenant_id": "\xff\xfe"}', Reason.INVALID_UTF8, "UTF-8"),
        (orjson.dumps(payload(name="cpu\u0000usage")), Reason.INVALID_EVENT, "NUL"),
        (orjson.dumps(payload(tags={"host": "a\u0000"})), Reason.INVALID_EVENT, "NUL"),
        (orjson.dumps(payload(tags={"host": 1})), Reason.INVALID_EVENT, "tags.host"),
        (orjson.dumps(payload(tags={f"k{i}": "v" for i in range(65)})), Reason.INVALID_EVENT, "tags"),
        (orjson.dumps(payload(name="")), Reason.INVALID_EVENT, "name"),
    ],
)
def test_invalid_records_are_refused_with_a_reason(raw: bytes, reason: Reason, detail: str) -> None:
    result = refused(raw)
    assert result.reason is reason
    assert detail in result.detail


def test_a_record_keyed_for_another_tenant_is_refused() -> None:
    other = str(uuid.uuid4())
    result = refused(orjson.dumps(payload()), key=other.encode())
    assert result.reason is Reason.KEY_MISMATCH
    assert refused(orjson.dumps(payload()), key=b"\xff").reason is Reason.KEY_MISMATCH


def test_large_record_keys_are_not_kept_in_memory() -> None:
    """Record keys are parsed once per key and remembered; a producer sending large distinct
    keys must not make the worker keep them (1,000 keys of 1 MiB once grew a worker by 1 GB)."""
    raw = orjson.dumps(payload())
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(100):
            key = n.to_bytes(4, "big") * (64 * 1024)  # 256 KiB, each distinct
            assert refused(raw, key=key).reason is Reason.KEY_MISMATCH
            del key
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 2 * 1024 * 1024, f"{grown} bytes kept after 100 distinct 256 KiB keys"


def test_a_tombstone_is_refused() -> None:
    assert refused(None).reason is Reason.INVALID_JSON


def test_the_dedupe_digest_is_per_tenant() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    assert dedupe_digest(a, "same") != dedupe_digest(b, "same")
    assert dedupe_digest(a, "same") == dedupe_digest(a, "same")
    assert len(dedupe_digest(a, "x")) == 16


@pytest.mark.parametrize(
    "occurred_at",
    [
        "0001-01-01T00:30:00+01:00",  # year 0 once in UTC
        "9999-12-31T23:30:00-01:00",  # year 10000 once in UTC
        "0001-01-01T00:00:00Z",  # year 0 once read by a session west of Greenwich
        "9999-12-31T12:00:00Z",  # year 10000 once read by a session east of Greenwich
    ],
)
def test_instants_a_session_time_zone_cannot_give_back_are_refused(occurred_at: str) -> None:
    result = refused(orjson.dumps(payload(occurred_at=occurred_at)))
    assert result.reason is Reason.INVALID_EVENT
    assert result.detail == (
        f"occurred_at: {datetime.fromisoformat(occurred_at).isoformat()} is outside 0001-01-02T00:00:00Z to "
        "9999-12-30T23:59:59.999999Z once in UTC (what PostgreSQL gives back in any session time zone)"
    )


@pytest.mark.parametrize(
    ("occurred_at", "utc"),
    [
        ("0001-01-02T00:00:00Z", datetime(1, 1, 2, tzinfo=UTC)),
        ("0001-01-02T23:59:00+23:59", datetime(1, 1, 2, tzinfo=UTC)),
        ("9999-12-30T23:59:59.999999Z", datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC)),
        ("9999-12-30T00:00:00.999999-23:59", datetime(9999, 12, 30, 23, 59, 0, 999999, tzinfo=UTC)),
    ],
)
def test_the_earliest_and_latest_instants_are_accepted(occurred_at: str, utc: datetime) -> None:
    assert ok(orjson.dumps(payload(occurred_at=occurred_at))).occurred_at == utc


@pytest.mark.parametrize(
    "number", [2.0**53, 1e16, 3.2e21, 1.2345678901234567e18, 2e19, -1e300, 1.7976931348623157e308, 1e308]
)
def test_a_result_keeps_a_float_of_any_magnitude(number: float) -> None:
    """Issue 19: a float is what a producer's JSON library writes for a large double; jsonb holds
    any finite one (`schemas.columns.jsonb_text` writes it so that jsonb gives it back)."""
    from schemas import AnalysisEvent

    body = {"tenant_id": TENANT, "dedupe_id": "a", "analysis_id": TENANT, "status": "completed"}
    body |= {"occurred_at": "2024-05-01T12:00:00Z", "result": {"scores": [0.5, {"x": number}]}}
    result = decode(orjson.dumps(body), AnalysisEvent)
    assert isinstance(result, Decoded), result
    assert result.event.result == {"scores": [0.5, {"x": number}]}
    assert type(result.event.result["scores"][1]["x"]) is float


def test_a_result_with_an_integer_beyond_64_bits_is_refused_saying_why() -> None:
    from schemas import AnalysisEvent

    body = {"tenant_id": TENANT, "dedupe_id": "a", "analysis_id": TENANT, "status": "completed"}
    body |= {"occurred_at": "2024-05-01T12:00:00Z", "result": {"n": 2**64}}
    result = decode(json.dumps(body).encode(), AnalysisEvent)
    assert isinstance(result, Rejected) and result.reason is Reason.INVALID_EVENT
    assert result.detail == (
        "result: cannot be stored: Integer exceeds 64-bit range (integers are stored within 64 bits, "
        "-2**63 to 2**64-1, a larger number can be sent as a float)"
    )


def test_a_result_keeps_64_bit_integers_and_smaller_floats() -> None:
    from schemas import AnalysisEvent

    kept = {"big": 2**64 - 1, "small": -(2**63), "f": 9007199254740991.0, "g": -1e15, "tiny": 5e-324}
    body = {"tenant_id": TENANT, "dedupe_id": "a", "analysis_id": TENANT, "status": "completed"}
    result = decode(orjson.dumps({**body, "occurred_at": "2024-05-01T12:00:00Z", "result": kept}), AnalysisEvent)
    assert isinstance(result, Decoded) and result.event.result == kept


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        (payload(**{"\x1b[2J\x1b[31mowned": 1}), "unknown field '\\x1b[2J\\x1b[31mowned'"),
        (payload(tags={"a\nb": 1}), "tags.a\\nb: Input should be a valid string"),
        (payload(tenant_id="\x07"), "found `\\x07` at 0"),
        (payload(**{"\u2028": 1}), "unknown field '\\u2028'"),
    ],
)
def test_details_show_control_characters_escaped(body: dict[str, object], shown: str) -> None:
    result = decode(orjson.dumps(body), MetricEvent, context={"unknown_fields": "reject"})
    assert isinstance(result, Rejected)
    assert shown in result.detail and result.detail.isprintable()
