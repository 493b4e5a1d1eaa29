"""The published JSON Schemas as a second reader of the topics, and records to compare it with.

`schema_faults` is what a producer validating against `schemas/published/<kind>.schema.json`
with jsonschema learns about a record value: the top-level fields it faults. `SAMPLES` are
invalid records of each kind, each faulting one field, with the reason the worker gives them.
`GAPS` are what the schemas cannot say (the README lists them): records the two readers judge
differently, kept here so that a gap that closes, or a new one, fails a test.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any

import jsonschema
import orjson

from streams.cli.schema import PUBLISHED

TENANT = "3f2b8c1e-8d4a-4c3b-9f7e-2a1b0c9d8e7f"
OTHER = "8c7d0c55-3b9e-4f0e-9f5a-0d6f1e2a3b4c"
NOT_JSON = "(not JSON)"
VALUE = "(value)"


@cache
def validator(kind: str) -> jsonschema.protocols.Validator:
    schema = json.loads((PUBLISHED / f"{kind}.schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def schema_faults(kind: str, raw: bytes | None) -> set[str]:
    """The top-level fields the kind's JSON Schema faults in this value (empty: it validates).
    A value that is not JSON text at all is faulted as a whole."""
    try:
        obj = json.loads((raw or b"").decode("utf-8"), parse_constant=_refuse_constant)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError included
        return {NOT_JSON}
    faults: set[str] = set()
    for error in validator(kind).iter_errors(obj):
        if error.absolute_path:
            faults.add(str(error.absolute_path[0]))
        elif error.validator == "required" and isinstance(obj, dict):
            faults |= set(error.validator_value) - set(obj)
        else:
            faults.add(VALUE)
    return faults


def good(kind: str, /, **change: Any) -> dict[str, Any]:
    """A valid value of the kind, with fields changed (None removes one)."""
    base: dict[str, Any] = {
        "tenant_id": TENANT,
        "dedupe_id": f"{kind}-1",
        "occurred_at": "2024-05-01T12:00:00.123456Z",
    }
    if kind == "metric":
        base |= {"name": "cpu.usage", "value": 12.5, "tags": {"host": "a"}}
    elif kind == "chat":
        base |= {"conversation_id": OTHER, "role": "assistant", "content": "hello", "prompt_tokens": 3}
    else:
        base |= {"analysis_id": OTHER, "status": "completed", "progress": 100, "result": {"score": 0.5}}
    base |= change
    return {k: v for k, v in base.items() if v is not None}


@dataclass(frozen=True)
class Sample:
    kind: str
    name: str
    value: bytes
    field: str  # the one top-level field at fault
    reason: str  # what the worker's dead letter says


def _sample(kind: str, name: str, field: str, reason: str = "invalid_event", /, **change: Any) -> Sample:
    return Sample(kind, name, orjson.dumps(good(kind, **change)), field, reason)


SAMPLES = [
    _sample("metric", "missing_name", "name", name=None),
    _sample("metric", "tenant_not_a_uuid", "tenant_id", tenant_id="tenant-42"),
    _sample("metric", "empty_dedupe_id", "dedupe_id", dedupe_id=""),
    _sample("metric", "long_dedupe_id", "dedupe_id", dedupe_id="x" * 129),
    _sample("metric", "nul_in_name", "name", name="cpu\u0000usage"),
    _sample("metric", "numeric_string", "value", value="1.5"),
    _sample("metric", "boolean_value", "value", value=True),
    _sample("metric", "timestamp_in_words", "occurred_at", occurred_at="yesterday"),
    _sample("metric", "timestamp_without_zone", "occurred_at", occurred_at="2024-05-01T12:00:00"),
    _sample("metric", "impossible_date", "occurred_at", occurred_at="2024-02-30T12:00:00Z"),
    _sample("metric", "epoch_number", "occurred_at", occurred_at=1714564800),
    _sample("metric", "too_many_tags", "tags", tags={f"k{i}": "v" for i in range(65)}),
    _sample("metric", "tag_not_text", "tags", tags={"host": 1}),
    _sample("metric", "empty_tag_key", "tags", tags={"": "v"}),
    _sample("metric", "nul_in_tag_key", "tags", tags={"h\u0000": "v"}),
    _sample("metric", "long_tag_value", "tags", tags={"h": "v" * 1025}),
    _sample("metric", "long_unit", "unit", unit="u" * 65),
    _sample("metric", "version_zero", "schema_version", schema_version=0),
    _sample("metric", "version_as_text", "schema_version", schema_version="1"),
    _sample("metric", "newer_version", "schema_version", "unsupported_version", schema_version=2),
    _sample("chat", "unknown_role", "role", role="moderator"),
    _sample("chat", "negative_tokens", "prompt_tokens", prompt_tokens=-1),
    _sample("chat", "tokens_beyond_int4", "completion_tokens", completion_tokens=2**31),
    _sample("chat", "fractional_tokens", "completion_tokens", completion_tokens=1.5),
    _sample("chat", "conversation_not_a_uuid", "conversation_id", conversation_id="conv-1"),
    _sample("chat", "empty_user_id", "user_id", user_id=""),
    _sample("chat", "missing_content", "content", content=None),
    _sample("chat", "nul_in_content", "content", content="a\u0000b"),
    _sample("chat", "newer_version", "schema_version", "unsupported_version", schema_version=3),
    _sample("analysis", "unknown_status", "status", status="done", result=None),
    _sample("analysis", "progress_over_100", "progress", progress=101),
    _sample("analysis", "result_before_completion", "result", status="processing"),
    _sample("analysis", "error_without_failure", "error", error="boom"),
    _sample("analysis", "result_not_an_object", "result", result=[1, 2]),
    _sample("analysis", "analysis_not_a_uuid", "analysis_id", analysis_id="a-1"),
    _sample("analysis", "long_kind", "kind", kind="k" * 129),
    _sample("analysis", "newer_version", "schema_version", "unsupported_version", schema_version=2),
]

# Valid by both readers: unknown fields, explicit nulls, the known version, other spellings.
VALID = [
    ("metric", orjson.dumps(good("metric", region="eu", retries={"n": 1}, schema_version=1, unit=None))),
    ("metric", orjson.dumps(good("metric", occurred_at="2024-05-01T14:00:00.5+02:00", tags={}))),
    ("chat", orjson.dumps(good("chat", locale="fr", user_id=None, model="m", completion_tokens=0))),
    ("analysis", orjson.dumps(good("analysis", status="failed", result=None, error="e", trace={"a": [1]}))),
    ("analysis", orjson.dumps(good("analysis", status="pending", result=None, progress=None, kind="k"))),
]

DEEP: Any = 1
for _ in range(70):
    DEEP = [DEEP]

# (kind, what, value, the schema accepts it, the worker accepts it)
GAPS = [
    ("chat", "content over the deployment's byte limit", orjson.dumps(good("chat", content="x" * 70_000)), True, False),
    ("analysis", "result nested 70 levels deep", orjson.dumps(good("analysis", result={"r": DEEP})), True, False),
    ("analysis", "result over 1 MiB", orjson.dumps(good("analysis", result={"r": "x" * (1 << 20)})), True, False),
    (
        "metric",
        "a number beyond a double",
        orjson.dumps(good("metric", value=0)).replace(b":0,", b":1e999,"),
        True,
        False,
    ),
    ("analysis", "an integer written 50.0", orjson.dumps(good("analysis", progress=50.0)), True, False),
    (
        "metric",
        "year 0 once in UTC",
        orjson.dumps(good("metric", occurred_at="0001-01-01T00:30:00+01:00")),
        True,
        False,
    ),
    ("metric", "NUL in an unknown field", orjson.dumps(good("metric", region="a\u0000")), True, False),
    ("metric", "an unknown field over 64 KiB", orjson.dumps(good("metric", region="x" * 70_000)), True, False),
    ("metric", "a UUID without hyphens", orjson.dumps(good("metric", tenant_id=TENANT.replace("-", ""))), False, True),
    (
        "metric",
        "a space before the time",
        orjson.dumps(good("metric", occurred_at="2024-05-01 12:00:00Z")),
        False,
        True,
    ),
    (
        "metric",
        "an offset without a colon",
        orjson.dumps(good("metric", occurred_at="2024-05-01T12:00:00+0200")),
        False,
        True,
    ),
]
