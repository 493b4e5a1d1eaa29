"""orjson codecs, and the one decode path every consumer of the topics uses.

`decode` never raises on bad input: it returns `Rejected` with a stable reason and a readable
detail, so a worker can route the record to its dead-letter topic and a tail can show why.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from uuid import UUID

import orjson
from pydantic import BaseModel, ValidationError

from schemas.deadletter import Reason
from schemas.fields import NO_NUL, NUL_MESSAGE

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Decoded(Generic[M]):
    event: M


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: Reason
    detail: str


def encode(event: BaseModel) -> bytes:
    """Serialise an event to its wire form (UTF-8 JSON, timestamps in RFC 3339)."""
    return orjson.dumps(event.model_dump(mode="json", exclude_none=True))


def encode_key(tenant_id: UUID) -> bytes:
    return str(tenant_id).encode()


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(event)"
        if err["type"] == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") == NO_NUL:
            msg = NUL_MESSAGE
        else:
            msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def _json_failure(raw: bytes, exc: orjson.JSONDecodeError) -> Rejected:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as uexc:
        return Rejected(Reason.INVALID_UTF8, f"value is not valid UTF-8 ({uexc.reason} at byte {uexc.start})")
    # Python's json accepts NaN/Infinity, which orjson (rightly) refuses: say so precisely.
    try:
        json.loads(raw)
    except (ValueError, RecursionError):
        return Rejected(Reason.INVALID_JSON, f"value is not JSON: {exc}")
    return Rejected(Reason.INVALID_EVENT, "value contains NaN, Infinity or a number too large for a double: not finite")


def decode(
    raw: bytes | None, model: type[M], key: bytes | None = None, context: dict[str, Any] | None = None
) -> Decoded[M] | Rejected:
    """Decode and validate one record value; check that the record key names the same tenant.

    `context` carries deployment limits to the model's validators (chat's max_content_bytes).
    """
    if raw is None:
        return Rejected(Reason.INVALID_JSON, "value is empty (a tombstone)")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _json_failure(raw, exc)
    if not isinstance(obj, dict):
        return Rejected(Reason.NOT_AN_OBJECT, f"value is JSON {type(obj).__name__}, not an object")
    try:
        event = model.model_validate(obj, context=context)
    except ValidationError as exc:
        too_large = any(e["type"] == "too_large" for e in exc.errors(include_url=False, include_input=False))
        return Rejected(Reason.TOO_LARGE if too_large else Reason.INVALID_EVENT, _describe(exc))
    tenant_id: UUID = event.tenant_id  # type: ignore[attr-defined]
    if key is not None and not _same_tenant(key, obj.get("tenant_id"), tenant_id):
        return Rejected(Reason.KEY_MISMATCH, f"record key {key[:64]!r} is not the event's tenant_id {tenant_id}")
    return Decoded(event)


def _same_tenant(key: bytes, text: object, tenant_id: UUID) -> bool:
    try:
        key_text = key.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if key_text == text:
        return True
    try:
        return UUID(key_text) == tenant_id
    except ValueError:
        return False


def dedupe_digest(tenant_id: UUID, dedupe_id: str) -> bytes:
    """16-byte digest of the idempotency key (tenant_id, dedupe_id)."""
    return hashlib.blake2b(tenant_id.bytes + dedupe_id.encode(), digest_size=16).digest()
