"""Whether a rejection is true of the record it names, judged with the standard library only.

`untrue(reason, detail, value, key)` returns what is wrong with a (reason, detail) given the
record's bytes, or None when it holds: invalid UTF-8 really is, a value called not JSON is not
(or holds a lone surrogate escape, which this contract refuses), a key mismatch names another
tenant, and every part of an invalid-event detail names a field of the model or of the payload.
Used by the property tests of `decode` and by the fault suites on what the DLQ topics hold.
"""

from __future__ import annotations

import json
from typing import Any

from schemas import AnalysisEvent, ChatEvent, MetricEvent, Reason
from tests.strategies import spelt_uuid

SAFETY_NET = "value could not be decoded"  # decode's catch-all: an exception escaped the checks
MODEL_FIELDS = {name for m in (MetricEvent, ChatEvent, AnalysisEvent) for name in m.model_fields}
WIRE_FIELDS = MODEL_FIELDS - {"attributes"}


def untrue(reason: str, detail: str, value: bytes | None, key: bytes | None) -> str | None:
    if reason not in set(Reason):
        return f"unknown reason {reason!r}"
    if not detail or detail.startswith(SAFETY_NET):
        return f"an exception escaped decoding: {detail!r}"
    if not detail.isprintable():
        return f"detail with control characters: {detail!r}"
    if value is None:
        return None if reason == Reason.INVALID_JSON else f"{reason} for a record without a value"
    if reason == Reason.INVALID_FRAME:  # value format confluent-json: magic byte 0 and a 4-byte schema id
        framed = len(value) >= 5 and value[0] == 0
        return "invalid_frame for a value with Confluent's header" if framed else None
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return None if reason == Reason.INVALID_UTF8 else f"{reason} for a value that is not UTF-8"
    if reason == Reason.INVALID_UTF8:
        return "invalid_utf8 for a value that is UTF-8"
    parsed, obj = _python_json(text)
    if reason == Reason.INVALID_JSON:
        # Not JSON, or JSON this decoder refuses for a stated cause: a lone surrogate escape.
        ok = not parsed or _has_surrogate(obj) or "surrogate" in detail
        return None if ok else f"invalid_json for JSON: {detail!r}"
    if reason == Reason.NOT_AN_OBJECT:
        return None if parsed and not isinstance(obj, dict) else "not_an_object for an object (or for no JSON)"
    if reason == Reason.KEY_MISMATCH:
        if key is None or not isinstance(obj, dict) or _names(key, obj.get("tenant_id")):
            return f"key_mismatch for key {key!r}"
        return None
    if reason in (Reason.TENANT_MISMATCH, Reason.DB_REJECTED):
        return None  # decided by the database, not by the bytes
    if reason == Reason.UNSUPPORTED_VERSION:
        version = obj.get("schema_version") if parsed and isinstance(obj, dict) else None
        newer = type(version) is int and version > 1  # every kind is at major version 1
        return None if newer and f"schema_version {version}" in detail else f"unsupported_version for {version!r}"
    if reason == Reason.UNKNOWN_FIELD:
        # `attributes` is not a wire field: on the wire it is an unknown field like any other.
        names = [k for k in obj if k not in WIRE_FIELDS] if parsed and isinstance(obj, dict) else []
        return None if names else "unknown_field for a value without unknown fields"
    if detail.startswith("value contains "):  # a constant JSON does not have, named as sent
        return None if detail.split()[2].rstrip(":") in text else f"{detail!r} names no constant of the value"
    if not parsed or "too large for a double" in detail:
        return None if "too large for a double" in detail else f"{reason} for a value that is not JSON: {detail!r}"
    if isinstance(obj, dict) and not any("; " in k for k in obj):
        names = {"(event)", *MODEL_FIELDS, *(printable(k) for k in obj)}
        for part in detail.split("; "):
            # Unknown fields kept as attributes are named together in front of what they broke.
            if part.startswith(("unknown field ", "unknown fields ")):
                continue
            if not any(part.startswith((f"{name}:", f"{name}.")) for name in names):
                return f"{part!r} names no field"
    return None


def printable(text: str) -> str:
    """A field name as a detail shows it (control characters escaped)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _python_json(text: str) -> tuple[bool, Any]:
    """(parsed, value) by the standard library, which reads NaN, Infinity and lone surrogates."""
    try:
        return True, json.loads(text)
    except (ValueError, RecursionError):
        return False, None


def strings(value: Any) -> list[str]:
    """Every string in a JSON value, object keys included."""
    out, stack = [], [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return out


def _has_surrogate(value: Any) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for s in strings(value) for c in s)


def _names(key: bytes, tenant: Any) -> bool:
    """The key and the tenant_id spell the same UUID, by the contract's spellings."""
    try:
        named = spelt_uuid(key.decode("utf-8"))
    except UnicodeDecodeError:
        return False
    return named is not None and named == spelt_uuid(tenant)
