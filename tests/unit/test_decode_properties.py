"""`schemas.codec.decode` is total and truthful, for the three kinds, on anything.

For any bytes, any key and any JSON value in any field: `decode` returns `Decoded` or `Rejected`,
never raises, and never needs its safety net (a Rejected "could not be decoded" means an
exception escaped the checks: a bug). A Rejected's reason is true of the bytes (checked with the
standard library, not with the code under test) and its detail is printable. A Decoded event is
storable: every value fits its PostgreSQL column and reads back in any session time zone, and it
encodes and decodes to itself. For valid payloads the decoded values are the ones computed here
by plain arithmetic (the UTC instant from the offset that was drawn).
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import BaseModel

from schemas import AnalysisEvent, ChatEvent, Decoded, MetricEvent, Reason, Rejected, decode, encode
from schemas.chat import MAX_CONTENT_BYTES
from schemas.codec import UNKNOWN_FIELDS, key_tenant
from tests.strategies import (
    EARLIEST,
    EXTREME_STAMPS,
    INT4,
    LATEST,
    VALID,
    Expected,
    Stamp,
    any_json,
    corrupted,
    escaped_keys_json,
    hostile_payload,
    keys_for,
    nested,
    other_digit_uuid,
    spelt_uuid,
    stamps,
    storable_json_scalar,
    storable_text,
    uuid_lookalike,
)
from tests.truthful import strings, untrue

MODELS: dict[str, type[BaseModel]] = {"metric": MetricEvent, "chat": ChatEvent, "analysis": AnalysisEvent}
CONTEXT = {"chat": {"max_content_bytes": MAX_CONTENT_BYTES}}
TENANT = "3f2b8c1e-8d4a-4c3b-9f7e-2a1b0c9d8e7f"


def decode_kind(kind: str, raw: bytes | None, key: bytes | None) -> Decoded[Any] | Rejected:
    result = decode(raw, MODELS[kind], key, CONTEXT.get(kind))
    assert isinstance(result, Decoded | Rejected), result
    return result


# -- what must hold of every outcome ----------------------------------------------------------


def check_rejected(result: Rejected, raw: bytes | None, key: bytes | None) -> None:
    assert isinstance(result.reason, Reason)
    problem = untrue(result.reason, result.detail, raw, key)
    assert problem is None, problem


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


# PostgreSQL column ranges, written out here rather than read from schemas.columns.
INT_RANGES = {"prompt_tokens": (0, INT4), "completion_tokens": (0, INT4), "progress": (0, 100)}


def check_storable(kind: str, event: BaseModel) -> None:
    """Every value fits its column, independently of the schema's own checks."""
    for name, value in event:
        if isinstance(value, str):
            assert "\x00" not in value, name
            value.encode("utf-8")  # no lone surrogate: PostgreSQL text is valid UTF-8
        elif isinstance(value, bool):
            pass
        elif isinstance(value, int):
            lo, hi = INT_RANGES[name]
            assert lo <= value <= hi, (name, value)
        elif isinstance(value, float):
            assert math.isfinite(value), name
        elif name == "occurred_at":
            assert value.utcoffset() == timedelta(0)
            assert EARLIEST <= value <= LATEST, value
        elif isinstance(value, dict):  # tags, result: jsonb
            assert _depth(value) <= 64
            text = json.dumps(value, ensure_ascii=False, allow_nan=False)  # raises on NaN / Infinity
            text.encode("utf-8")
            assert "\x00" not in "".join(strings(value))
            assert all(-(2**63) <= n < 2**64 for n in _ints(value))
            assert all(math.isfinite(f) for f in _floats(value))  # any magnitude: jsonb's numeric holds it
    again = decode(encode(event), type(event), None, CONTEXT.get(kind))
    # Kept unknown fields go back to the top level on the wire, and come back as attributes.
    assert isinstance(again, Decoded) and again.event == event, again


def _numbers(value: Any, kind: type) -> list[Any]:
    out, stack = [], [value]
    while stack:
        node = stack.pop()
        if isinstance(node, bool):
            continue
        if isinstance(node, kind):
            out.append(node)
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return out


def _ints(value: Any) -> list[int]:
    return _numbers(value, int)


def _floats(value: Any) -> list[float]:
    return _numbers(value, float)


def check(kind: str, raw: bytes | None, key: bytes | None) -> Decoded[Any] | Rejected:
    result = decode_kind(kind, raw, key)
    if isinstance(result, Rejected):
        check_rejected(result, raw, key)
    else:
        check_storable(kind, result.event)
    return result


# -- the properties ---------------------------------------------------------------------------

kinds = pytest.mark.parametrize("kind", ["metric", "chat", "analysis"])


@kinds
@given(raw=st.one_of(st.none(), st.binary(max_size=300)), key=st.one_of(st.none(), st.binary(max_size=40)))
@example(raw=b"", key=None)
@example(raw=b"\xef\xbb\xbf{}", key=None)  # a UTF-8 byte order mark
@example(raw=b"\x00\x00\x00{", key=None)  # what json.loads would take for UTF-32
@example(raw=b"[" * 2000 + b"]" * 2000, key=None)
@example(raw=b"1" * 5000, key=None)  # beyond Python's int-from-string limit
def test_any_bytes(kind: str, raw: bytes | None, key: bytes | None) -> None:
    check(kind, raw, key)


@kinds
@given(data=st.data())
def test_any_json_value_in_any_field(kind: str, data: st.DataObject) -> None:
    payload, raw = data.draw(hostile_payload(kind))
    key = data.draw(keys_for(payload.get("tenant_id")))
    check(kind, raw, key)
    check(kind, data.draw(corrupted(raw)), key)


@kinds
@given(value=any_json, ascii_only=st.booleans())
def test_any_json_document(kind: str, value: Any, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    check(kind, text.encode("utf-8", "surrogatepass"), None)


@kinds
@given(data=st.data())
def test_valid_events_decode_to_the_values_sent(kind: str, data: st.DataObject) -> None:
    exp: Expected = data.draw(VALID[kind]())
    raw = json.dumps(exp.payload, ensure_ascii=data.draw(st.booleans())).encode()
    result = check(kind, raw, str(exp.tenant).encode())
    assert isinstance(result, Decoded), result
    event = result.event
    assert event.tenant_id == exp.tenant
    assert event.dedupe_id == exp.dedupe_id
    assert event.occurred_at == exp.occurred_at and event.occurred_at.tzinfo is UTC
    for name, want in exp.values.items():
        got = getattr(event, {"session_id": "conversation_id"}.get(name, name))
        assert got == want and type(got) is type(want), (name, got, want)
        if isinstance(want, float):
            assert math.copysign(1, got) == math.copysign(1, want)  # -0.0 stays negative


@given(stamp=stamps())
def test_timestamps_name_the_instant_of_their_offset_or_are_refused(stamp: Stamp) -> None:
    check_stamp(stamp)


@pytest.mark.parametrize("stamp", EXTREME_STAMPS, ids=lambda s: s.text)
def test_timestamps_at_the_ends(stamp: Stamp) -> None:
    check_stamp(stamp)


def check_stamp(stamp: Stamp) -> None:
    body = {"tenant_id": TENANT, "dedupe_id": "t", "name": "n", "value": 1, "tags": {}, "occurred_at": stamp.text}
    result = check("metric", orjson.dumps(body), None)
    if stamp.utc is None:
        assert isinstance(result, Rejected) and result.reason is Reason.INVALID_EVENT, (stamp, result)
        assert result.detail.startswith("occurred_at: "), result.detail
    else:
        assert isinstance(result, Decoded), (stamp, result)
        assert result.event.occurred_at == stamp.utc


# -- the faults of issue 9, by name -----------------------------------------------------------


def chat(**change: Any) -> dict[str, Any]:
    body = {
        "tenant_id": TENANT,
        "dedupe_id": "c",
        "conversation_id": str(uuid.uuid4()),
        "role": "user",
        "content": "hi",
        "occurred_at": "2024-05-01T12:00:00Z",
    }
    return {**body, **change}


def test_a_result_nested_300_levels_is_refused_as_too_deep() -> None:
    body = {"tenant_id": TENANT, "dedupe_id": "a", "analysis_id": TENANT, "status": "completed"}
    body |= {"occurred_at": "2024-05-01T12:00:00Z", "result": nested(300)}
    result = check("analysis", json.dumps(body).encode(), None)
    assert isinstance(result, Rejected) and result.detail == "result: is nested more than 64 levels deep"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("where", ['{{"score": {}}}', '{{"a": [1, {{"b": {}}}]}}'])
def test_nan_and_infinity_inside_a_json_object_are_refused_not_stored_as_null(literal: str, where: str) -> None:
    """pydantic-core's JSON parser reads these literals into a jsonb field's value, and orjson
    would then store them as null (found by test_any_json_value_in_any_field)."""
    body = {"tenant_id": TENANT, "dedupe_id": "a", "analysis_id": TENANT, "status": "completed"}
    raw = json.dumps(body | {"occurred_at": "2024-05-01T12:00:00Z", "result": "RESULT"}).encode()
    raw = raw.replace(b'"RESULT"', where.format(literal).encode())
    result = check("analysis", raw, None)
    assert isinstance(result, Rejected) and result.reason is Reason.INVALID_EVENT, result
    assert result.detail == f"value contains {literal}: numbers must be finite"


@pytest.mark.parametrize("tokens", [4294967301, 2**31, 2**63, 2**64 + 5, 10**30, -1])
def test_token_counts_beyond_the_column_are_refused_never_wrapped(tokens: int) -> None:
    result = check("chat", json.dumps(chat(prompt_tokens=tokens)).encode(), None)
    assert isinstance(result, Rejected) and result.reason is Reason.INVALID_EVENT
    assert result.detail.startswith("prompt_tokens: Input should be")


def test_a_lone_surrogate_escape_is_refused_with_what_it_is() -> None:
    raw = json.dumps(chat(content="\ud83d")).encode()
    assert b'"\\ud83d"' in raw
    result = check("chat", raw, None)
    assert isinstance(result, Rejected) and result.reason is Reason.INVALID_JSON
    assert "surrogate" in result.detail and "NaN" not in result.detail


def test_content_of_5_mb_is_too_large() -> None:
    result = check("chat", json.dumps(chat(content="x" * 5_000_000)).encode(), None)
    assert isinstance(result, Rejected) and result.reason is Reason.TOO_LARGE
    assert result.detail == f"content: content is 5000000 bytes, more than the {MAX_CONTENT_BYTES} allowed"


def test_an_integer_a_double_cannot_hold_exactly_is_refused_not_rounded() -> None:
    """9007199254740993 would be stored as 9007199254740992: refused, naming the field."""
    tenant = "5f0c6b9e-1c4e-4b8a-9d2e-0a1b2c3d4e5f"
    for literal, ok in (
        (b"9007199254740992", True),
        (b"-9007199254740992", True),
        (b"9007199254740993", False),
        (b"123456789012345678901234567890", False),
        (b"1e29", True),
        (b"2.5", True),
    ):
        raw = (
            b'{"tenant_id":"'
            + tenant.encode()
            + b'","dedupe_id":"d","name":"n","value":'
            + literal
            + b',"tags":{},"occurred_at":"2024-01-01T00:00:00Z"}'
        )
        result = decode(raw, MetricEvent)
        if ok:
            assert isinstance(result, Decoded) and result.event.value == float(literal), literal
        else:
            assert isinstance(result, Rejected) and result.reason is Reason.INVALID_EVENT, literal
            assert "value" in result.detail and "exactly" in result.detail


# -- issue 19: names are judged decoded, and a UUID is spelt in ASCII hex only ------------------

POLICIES = ["keep", "ignore", "reject"]


def decode_with(kind: str, raw: bytes, key: bytes | None, policy: str) -> Decoded[Any] | Rejected:
    result = decode(raw, MODELS[kind], key, {**CONTEXT.get(kind, {}), UNKNOWN_FIELDS: policy})
    if isinstance(result, Rejected):
        check_rejected(result, raw, key)
    return result


@kinds
@given(policy=st.sampled_from(POLICIES), data=st.data())
def test_escaped_keys_decode_as_the_names_they_spell(kind: str, policy: str, data: st.DataObject) -> None:
    """Any key of any level (every field of the kind, the keys inside tags and result, an unknown
    field) spelt with random \\uXXXX escapes decodes as the plain spelling does, under each policy."""
    exp: Expected = data.draw(VALID[kind]())
    payload = dict(exp.payload)
    if data.draw(st.booleans()):
        # Named unlike any kind's field (the truthfulness oracle knows the fields of all kinds).
        payload["x-" + data.draw(storable_text(0, 20))] = data.draw(storable_json_scalar)
    key = str(exp.tenant).encode()
    plain = decode_with(kind, json.dumps(payload).encode(), key, policy)
    escaped = data.draw(escaped_keys_json(payload))
    assert b"\\u" in escaped
    assert decode_with(kind, escaped, key, policy) == plain


@kinds
@given(policy=st.sampled_from(POLICIES), data=st.data())
def test_a_wire_field_named_attributes_is_an_unknown_field_however_spelt(
    kind: str, policy: str, data: st.DataObject
) -> None:
    """`attributes` is the model's own field for kept unknown fields, not a wire field: a key
    spelling it (plainly or with any escapes) is kept, ignored or refused like any unknown field,
    never taken as the model's field (issue 19: "\\u0061ttributes" passed a byte search)."""
    exp: Expected = data.draw(VALID[kind]())
    # Kept, it is one level deeper than sent: not drawn near the depth limit.
    value = data.draw(
        st.one_of(storable_json_scalar, st.dictionaries(storable_text(), storable_json_scalar, max_size=5))
    )
    payload = {**exp.payload, "attributes": value}
    raw = data.draw(st.one_of(st.just(json.dumps(payload).encode()), escaped_keys_json(payload)))
    result = decode_with(kind, raw, str(exp.tenant).encode(), policy)
    if policy == "reject":
        assert isinstance(result, Rejected) and result.reason is Reason.UNKNOWN_FIELD, result
        assert result.unknown == ("attributes",) and "'attributes'" in result.detail
        return
    assert isinstance(result, Decoded), result
    assert result.unknown == ("attributes",)
    assert result.event.attributes == ({"attributes": value} if policy == "keep" else None)


def test_an_escaped_attributes_key_is_refused_under_reject() -> None:
    """The reproduction of issue 19, item 1, byte for byte."""
    body = {"tenant_id": TENANT, "dedupe_id": "d", "name": "n", "value": 1, "tags": {}}
    raw = json.dumps({**body, "occurred_at": "2024-01-01T00:00:00Z"}).encode()[:-1] + b', "\\u0061ttributes": {"x": 1}}'
    result = decode(raw, MetricEvent, TENANT.encode(), {UNKNOWN_FIELDS: "reject"})
    assert result == Rejected(
        Reason.UNKNOWN_FIELD, "unknown field 'attributes': this kind refuses fields it does not know", ("attributes",)
    )


ID_FIELDS = {
    "metric": ["tenant_id"],
    "chat": ["tenant_id", "conversation_id"],
    "analysis": ["tenant_id", "analysis_id"],
}


@kinds
@given(data=st.data())
def test_ids_and_keys_in_other_digits_name_no_uuid(kind: str, data: st.DataObject) -> None:
    """A UUID spelt with digits of another script (category Nd: Bengali, fullwidth, ...) is read
    by Python's uuid.UUID as the UUID; neither a key nor any id field takes it (issue 19)."""
    text, u = data.draw(other_digit_uuid())
    assert uuid.UUID(text) == u  # the trap: the standard library reads it
    exp: Expected = data.draw(VALID[kind]())
    as_key = check(kind, json.dumps({**exp.payload, "tenant_id": str(u)}).encode(), text.encode())
    assert isinstance(as_key, Rejected) and as_key.reason is Reason.KEY_MISMATCH, as_key
    assert key_tenant(text.encode()) is None
    field = data.draw(st.sampled_from(ID_FIELDS[kind]))
    as_value = check(kind, json.dumps({**exp.payload, field: text}).encode(), None)
    assert isinstance(as_value, Rejected) and as_value.reason is Reason.INVALID_EVENT, as_value
    assert as_value.detail.startswith(f"{field}: "), as_value.detail


@given(text=uuid_lookalike())
def test_a_key_names_a_tenant_exactly_when_the_value_would(text: str) -> None:
    """One rule for keys and values: a text is a tenant as a record key exactly when it is one as
    the value's tenant_id, the same UUID, and exactly when it is one of the spellings the
    contract lists (ASCII hex digits only)."""
    body = {"tenant_id": text, "dedupe_id": "d", "name": "n", "value": 1, "tags": {}}
    result = decode(orjson.dumps({**body, "occurred_at": "2024-01-01T00:00:00Z"}), MetricEvent)
    as_value = result.event.tenant_id if isinstance(result, Decoded) else None
    if not isinstance(result, Decoded):
        assert result.reason is Reason.INVALID_EVENT and result.detail.startswith("tenant_id: "), result
    as_key = key_tenant(text.encode("utf-8", "surrogatepass"))
    assert as_key == as_value == spelt_uuid(text), (text, as_key, as_value)
    if as_value is not None:
        both = decode(orjson.dumps({**body, "occurred_at": "2024-01-01T00:00:00Z"}), MetricEvent, text.encode())
        assert isinstance(both, Decoded), both
